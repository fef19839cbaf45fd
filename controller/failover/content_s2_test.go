package failover

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/session"
	"github.com/ferrydr/ferry/protocol/session/sessiontest"
	"github.com/ferrydr/ferry/storage"
)

// A chunk an agent sent as S2 is stored as S2. A move to an agent of v3
// or later sends it as stored; to an older one decoded, as codec none
// (none and zstd are what agents of every version decode).
func TestContentSendsAnS2ChunkAsStoredOnlyToAnAgentThatDecodesIt(t *testing.T) {
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
	var old data.Block
	require.NoError(t, e.content(ctx, repo, readMode{}, h, nil, &old))
	require.Equal(t, data.CodecNone, old.Codec)
	require.Equal(t, uint32(bs), old.PlainLen)
	require.True(t, bytes.Equal(plain, old.Data))

	var v3 data.Block
	require.NoError(t, e.content(ctx, repo, readMode{s2: true}, h, nil, &v3))
	require.Equal(t, data.CodecS2, v3.Codec)
	require.Equal(t, uint32(bs), v3.PlainLen)
	require.True(t, bytes.Equal(env.Data, v3.Data), "the chunk as stored")
	dec, err := data.NewDecompressor(1)
	require.NoError(t, err)
	defer dec.Close()
	got, err := dec.Plain(nil, &v3)
	require.NoError(t, err)
	require.True(t, bytes.Equal(plain, got))
}

// A restore stream carries S2 only to an agent whose session negotiated v3
// or later: a session with an agent of an older build (1–2) gets none.
func TestRestoreTakesS2OnlyFromV3(t *testing.T) {
	for _, tc := range []struct {
		agent protocol.VersionRange
		want  bool
	}{
		{protocol.VersionRange{Min: 1, Max: 2}, false},
		{protocol.AgentVersions(), true},
	} {
		cfg := session.DefaultConfig()
		cfg.Versions = tc.agent
		ctrl, _ := sessiontest.Pair(t, cfg)
		st, err := ctrl.Open(context.Background(), protocol.KindRestore)
		require.NoError(t, err)
		require.Equal(t, tc.want, restoreTakesS2(st), "agent speaking %s", tc.agent)
		st.Close()
	}
}
