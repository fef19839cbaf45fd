package storage

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// TestVerifyPacesEachChunkOnce: a pass announces how many chunks it will
// read and paces every chunk read with its stored length, once per pass
// even when several points (and blocks) read the same chunk; the pacer's
// error ends the pass. The point audit's rate limit and progress rest on
// this.
func TestVerifyPacesEachChunkOnce(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	a, b := content(21, possBlock), content(22, possBlock)
	commitBlocks(t, r, "m", chunkWrite("d", 0, a), chunkWrite("d", 1, b))
	commitBlocks(t, r, "m", chunkWrite("d", 2, a)) // a third block reading a
	commitBlocks(t, r, "m", chunkWrite("d", 3, b)) // and a fourth reading b

	planned, calls := -1, 0
	var paced int64
	rep, err := r.Verify(ctx, VerifyOptions{ReadData: true,
		Plan: func(n int) { planned = n },
		Pace: func(_ context.Context, n int64) error { calls++; paced += n; return nil }})
	require.NoError(t, err)
	require.Empty(t, rep.Damaged)
	require.Equal(t, 2, planned, "two distinct chunks")
	require.Equal(t, 2, calls, "each chunk is read once per pass")
	require.Equal(t, rep.Bytes, paced, "the pacer sees every byte read")
	require.Equal(t, int64(2), rep.Chunks)

	stop := errors.New("stop")
	calls = 0
	_, err = r.Verify(ctx, VerifyOptions{Pace: func(context.Context, int64) error { calls++; return stop }})
	require.ErrorIs(t, err, stop)
	require.Equal(t, 1, calls, "the pass ends at the pacer's error")
}

// TestIncompleteIndexIsNamedAndMarked: a row naming a chunk the index no
// longer holds (an incomplete index) is damage Verify names by chunk id,
// point, disk and block; MarkMissing flags the points that read it as
// Damaged and ignores ids of stored chunks.
func TestIncompleteIndexIsNamedAndMarked(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	a, b := content(31, possBlock), content(34, possBlock)
	p1 := commitBlocks(t, r, "m", chunkWrite("d", 0, a), chunkWrite("d", 1, b))
	p2 := commitBlocks(t, r, "m", chunkWrite("d", 1, content(33, possBlock)))
	require.NoError(t, r.c.settle(ctx)) // the rows in the main tables, where the test edits them
	row, err := r.c.chunkByHash(ctx, Hash(blake3.Sum256(a)))
	require.NoError(t, err)
	_, err = r.c.db.Exec(`DELETE FROM chunks WHERE id=?`, row.id)
	require.NoError(t, err)

	rep, err := r.Verify(ctx, VerifyOptions{ReadData: true})
	require.NoError(t, err)
	require.Len(t, rep.Damaged, 1)
	d := rep.Damaged[0]
	require.ErrorIs(t, d.Err, ErrChunkMissing)
	require.Equal(t, row.id, d.ChunkID)
	require.Equal(t, []PointDisk{{PointID: p1.ID, Machine: "m", Disk: "d", Blocks: []int64{0}},
		{PointID: p2.ID, Machine: "m", Disk: "d", Blocks: []int64{0}}}, d.Affected)

	other, err := r.c.chunkByHash(ctx, Hash(blake3.Sum256(b)))
	require.NoError(t, err)
	n, err := r.MarkMissing(ctx, []int64{d.ChunkID, other.id}, "audit")
	require.NoError(t, err)
	require.Equal(t, 1, n, "a stored chunk's id is not marked missing")
	pts, err := r.Points(ctx, "m")
	require.NoError(t, err)
	for _, p := range pts {
		require.True(t, p.Damaged, "point %d reads block 0", p.ID)
	}
}

// TestVerifyDuringGCFindsNoFalseDamage: a GC that runs while a paced
// Verify is under way (between its pacer's calls) deletes chunks the pass
// had listed; the pass takes them for gone, not damaged. Before, they came
// back as missing chunks, which the point audit would have marked.
func TestVerifyDuringGCFindsNoFalseDamage(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	p1 := commitBlocks(t, r, "m", chunkWrite("d", 0, content(40, possBlock)), chunkWrite("d", 1, content(43, possBlock)))
	commitBlocks(t, r, "m", chunkWrite("d", 0, content(45, possBlock)), chunkWrite("d", 1, content(46, possBlock)))
	require.NoError(t, r.DeletePoint(ctx, p1.ID)) // the first two chunks are now unreferenced

	ran := false
	rep, err := r.Verify(ctx, VerifyOptions{ReadData: true, Pace: func(context.Context, int64) error {
		if !ran {
			ran = true
			g, err := r.GC(ctx, GCOptions{})
			require.NoError(t, err)
			require.Equal(t, int64(2), g.ChunksDeleted)
		}
		return nil
	}})
	require.NoError(t, err)
	require.True(t, ran)
	require.Empty(t, rep.Damaged, "chunks GC deleted mid-pass are not damage")
}
