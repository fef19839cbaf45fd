package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// requireCapability skips a test that needs something this machine lacks,
// and fails it instead under FERRY_CI=1.
func requireCapability(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("FERRY_CI") == "1" {
		t.Fatalf("required capability missing under FERRY_CI=1: %s", why)
	}
	t.Skip("skipping: " + why)
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// fakeClock is an injected clock that advances one second per call.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { c.t = c.t.Add(time.Second); return c.t }

func newTestRepo(t testing.TB, co CreateOptions, oo OpenOptions) (*Repo, string) {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	if co.PackSize == 0 {
		co.PackSize = MinPackSize
	}
	require.NoError(t, Create(ctx, dir, co))
	if oo.Logger == nil {
		oo.Logger = testLogger(t)
	}
	r, err := Open(ctx, dir, oo)
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return r, dir
}

// content makes deterministic block contents of three kinds: compressible
// text-like, random, and (kind 2) all zeros.
func content(seed uint64, size int) []byte {
	b := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	switch seed % 3 {
	case 0:
		words := []string{"ferry ", "block ", "disk ", "point ", "recovery ", "site ", "chunk ", "pack "}
		for i := 0; i < size; {
			i += copy(b[i:], words[rng.IntN(len(words))])
		}
	case 1:
		for i := 0; i+8 <= size; i += 8 {
			binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
		}
	}
	return b
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// chunkWrite makes a BlockWrite carrying plain content (or a Zero write).
func chunkWrite(disk string, block int64, data []byte) BlockWrite {
	if isZero(data) {
		return BlockWrite{Disk: disk, Block: block, Zero: true}
	}
	h := Hash(blake3.Sum256(data))
	return BlockWrite{Disk: disk, Block: block, Hash: h, Chunk: &Chunk{Hash: h, Codec: CodecNone, Data: data, PlainLen: len(data)}}
}

// isPatchRecord says whether the chunk of h is stored as a patch record.
func isPatchRecord(t *testing.T, r *Repo, h Hash) bool {
	t.Helper()
	row, err := r.c.chunkByHash(context.Background(), h)
	require.NoError(t, err)
	return row.patch
}
