package failover

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/storage"
)

// A chunk an agent sent as S2 is stored as S2; a move sends it decoded,
// as codec none, since restore streams carry none and zstd only (agents
// of every version decode them).
func TestContentSendsAnS2ChunkAsNone(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	require.NoError(t, storage.Create(ctx, dir, storage.CreateOptions{PackSize: storage.MinPackSize}))
	repo, err := storage.Open(ctx, dir, storage.OpenOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { repo.Close() })
	const bs = 4096
	plain := bytes.Repeat([]byte("restore me "), bs/11+1)[:bs]
	h := storage.Hash(blake3.Sum256(plain))
	p, err := repo.BeginPoint(ctx, "m", []storage.DiskSpec{{Name: "sda", Size: bs, BlockSize: bs}})
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, []storage.BlockWrite{{Disk: "sda", Block: 0, Hash: h,
		Chunk: &storage.Chunk{Hash: h, Codec: storage.CodecS2, Data: s2.Encode(nil, plain), PlainLen: bs}}}))
	_, err = p.Commit(ctx, storage.CommitInfo{Instant: time.Unix(1000, 0), Consistency: storage.CrashConsistent})
	require.NoError(t, err)
	env, err := repo.ChunkEnvelope(ctx, h)
	require.NoError(t, err)
	require.Equal(t, storage.CodecS2, env.Codec)

	e := &Engine{Repo: repo}
	var blk data.Block
	require.NoError(t, e.content(ctx, repo, false, h, nil, &blk))
	require.Equal(t, data.CodecNone, blk.Codec)
	require.Equal(t, uint32(bs), blk.PlainLen)
	require.True(t, bytes.Equal(plain, blk.Data))
}
