package failover

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/storage"
)

// A chunk the controller stored as S2 (what it builds at ingest, until the
// compactor re-encodes it) leaves on a restore stream as its plaintext:
// restore streams carry none or zstd, and an S2 block sent as "none" was
// refused by every agent ("uncompressed data of 57535 bytes, plain length
// 65536").
func TestRestoreSendsAnS2ChunkAsItsPlaintext(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	require.NoError(t, storage.Create(ctx, dir, storage.CreateOptions{}))
	repo, err := storage.Open(ctx, dir, storage.OpenOptions{})
	require.NoError(t, err)
	defer repo.Close()

	const bs = 64 << 10
	plain := bytes.Repeat([]byte("a block of text that S2 compresses well. "), bs/41+1)[:bs]
	h := storage.Hash(blake3.Sum256(plain))
	p, err := repo.BeginPoint(ctx, "m", []storage.DiskSpec{{Name: "d", Size: bs, BlockSize: bs}})
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, []storage.BlockWrite{{Disk: "d", Block: 0, Hash: h,
		Chunk: &storage.Chunk{Hash: h, Codec: storage.CodecNone, Data: plain, PlainLen: bs}}}))
	_, err = p.Commit(ctx, storage.CommitInfo{Instant: time.Unix(1000, 0), Consistency: storage.CrashConsistent})
	require.NoError(t, err)
	env, err := repo.ChunkEnvelope(ctx, h)
	require.NoError(t, err)
	require.Equal(t, storage.CodecS2, env.Codec, "the precondition: the chunk is stored as S2")

	e := &Engine{Repo: repo}
	var blk data.Block
	require.NoError(t, e.content(ctx, repo, false, h, nil, &blk))
	require.Equal(t, data.CodecNone, blk.Codec)
	require.EqualValues(t, bs, blk.PlainLen)
	require.True(t, bytes.Equal(plain, blk.Data), "the block carries the chunk's plaintext")
}
