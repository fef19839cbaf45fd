package storage

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// An S2 chunk, as an agent on a fast link sends it, is verified by its
// plaintext hash, stored, and reads back; an S2 block whose header claims
// another length than the write says is refused as a hash mismatch before
// anything is stored.
func TestS2ChunkStoresAndReadsBack(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{Clock: clk.now})
	disks := []DiskSpec{{Name: "sda", Size: 2 * tbs, BlockSize: tbs}}
	plain := content(3, tbs) // compressible text
	h := Hash(blake3.Sum256(plain))
	enc := s2.Encode(nil, plain)
	require.Less(t, len(enc), len(plain), "the test block must compress")

	p, err := r.BeginPoint(ctx, "m1", disks)
	require.NoError(t, err)
	short := content(6, tbs/2) // a valid S2 block of half the length
	bad := BlockWrite{Disk: "sda", Block: 1, Hash: Hash(blake3.Sum256(short)),
		Chunk: &Chunk{Hash: Hash(blake3.Sum256(short)), Codec: CodecS2, Data: s2.Encode(nil, short), PlainLen: tbs}}
	require.ErrorIs(t, p.Write(ctx, []BlockWrite{bad}), ErrHashMismatch)

	require.NoError(t, p.Write(ctx, []BlockWrite{{Disk: "sda", Block: 0, Hash: h,
		Chunk: &Chunk{Hash: h, Codec: CodecS2, Data: enc, PlainLen: tbs}}}))
	pt, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(1000, 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	d, err := r.OpenDisk(ctx, pt.ID, "sda")
	require.NoError(t, err)
	var buf bytes.Buffer
	_, err = d.WriteTo(&buf)
	require.NoError(t, err)
	require.Equal(t, append(plain, make([]byte, tbs)...), buf.Bytes())
}
