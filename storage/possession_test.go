package storage

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

const possBlock = 4096

func possDisks() []DiskSpec {
	return []DiskSpec{{Name: "d", Size: 16 * possBlock, BlockSize: possBlock}}
}

// commitBlocks writes blocks into a new point of machine and commits it.
func commitBlocks(t *testing.T, r *Repo, machine string, ws ...BlockWrite) Point {
	t.Helper()
	ctx := context.Background()
	p, err := r.BeginPoint(ctx, machine, possDisks())
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, ws))
	pt, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(1e9, 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	return pt
}

// TestHasChunksOf: a chunk counts as possessed only for the machines with
// a live point that references it; for any other owner it answers like a
// chunk that is not stored. Deleting the machine ends the possession.
func TestHasChunksOf(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	a, b := content(1, possBlock), content(4, possBlock)
	ha, hb := Hash(blake3.Sum256(a)), Hash(blake3.Sum256(b))
	absent := Hash(blake3.Sum256([]byte("never stored")))
	commitBlocks(t, r, "alpha", chunkWrite("d", 0, a))
	commitBlocks(t, r, "beta", chunkWrite("d", 1, b))

	has, err := r.HasChunks(ctx, []Hash{ha, hb, absent})
	require.NoError(t, err)
	require.Equal(t, []bool{true, true, false}, has, "both are stored")

	for _, c := range []struct {
		owners []string
		want   []bool
	}{
		{[]string{"alpha"}, []bool{true, false, false}},
		{[]string{"beta"}, []bool{false, true, false}},
		{[]string{"alpha", "beta"}, []bool{true, true, false}},
		{[]string{"gamma"}, []bool{false, false, false}},
		{nil, []bool{false, false, false}},
	} {
		got, err := r.HasChunksOf(ctx, c.owners, []Hash{ha, hb, absent})
		require.NoError(t, err)
		require.Equal(t, c.want, got, "owners %v", c.owners)
	}

	// A pending point's own rows count: what a cycle uploaded it may
	// reference again in the same cycle.
	p, err := r.BeginPoint(ctx, "gamma", possDisks())
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("d", 2, a)}))
	got, err := r.HasChunksOf(ctx, []string{"gamma"}, []Hash{ha, hb})
	require.NoError(t, err)
	require.Equal(t, []bool{true, false}, got)

	// Alpha deleted (unprotected): alpha possesses nothing, also once a
	// machine is protected again under that name.
	require.NoError(t, r.DeleteMachine(ctx, "alpha"))
	got, err = r.HasChunksOf(ctx, []string{"alpha"}, []Hash{ha})
	require.NoError(t, err)
	require.Equal(t, []bool{false}, got)
	commitBlocks(t, r, "alpha", chunkWrite("d", 5, b))
	got, err = r.HasChunksOf(ctx, []string{"alpha"}, []Hash{ha, hb})
	require.NoError(t, err)
	require.Equal(t, []bool{false, true}, got)
}

// TestWriteChecksSuppliedChunkOfStoredHash: a write that supplies bytes
// under the hash of a chunk stored already (by another machine) is
// checked like new content: garbage is refused with ErrHashMismatch and
// stores nothing; the right bytes are deduplicated (one copy stored).
// Before, a supplied chunk whose hash was stored was skipped unchecked,
// so claiming a stored hash with any bytes referenced the stored chunk.
func TestWriteChecksSuppliedChunkOfStoredHash(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	secret := content(7, possBlock)
	h := Hash(blake3.Sum256(secret))
	commitBlocks(t, r, "victim", chunkWrite("d", 0, secret))
	before, err := r.Stats(ctx)
	require.NoError(t, err)

	p, err := r.BeginPoint(ctx, "attacker", possDisks())
	require.NoError(t, err)
	garbage := make([]byte, possBlock)
	garbage[0] = 1
	err = p.Write(ctx, []BlockWrite{{Disk: "d", Block: 0, Hash: h, Chunk: &Chunk{Hash: h, Codec: CodecNone, Data: garbage, PlainLen: possBlock}}})
	require.ErrorIs(t, err, ErrHashMismatch)
	got, err := r.HasChunksOf(ctx, []string{"attacker"}, []Hash{h})
	require.NoError(t, err)
	require.Equal(t, []bool{false}, got, "the refused write referenced nothing")

	// The real content, sent by a machine that has it: one copy.
	require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("d", 0, secret)}))
	after, err := r.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, before.Chunks, after.Chunks, "storage keeps one copy")
	got, err = r.HasChunksOf(ctx, []string{"attacker"}, []Hash{h})
	require.NoError(t, err)
	require.Equal(t, []bool{true}, got)
}
