package storage

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// TestDamagedChunkIsStoredAgain: a chunk whose pack bytes were damaged is
// found by Verify and marked; from then on it counts as not stored (a
// writer that has the content must send it, hash-only writes are refused
// with ErrChunkMissing), the committed points that read it are Damaged,
// and the next write that supplies it stores it again under its id: every
// point reads whole again and none is Damaged.
func TestDamagedChunkIsStoredAgain(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	blk := content(10, possBlock) // random: stored as is
	other := content(13, possBlock)
	h := Hash(blake3.Sum256(blk))
	p1 := commitBlocks(t, r, "m", chunkWrite("d", 0, blk), chunkWrite("d", 1, other))
	p2 := commitBlocks(t, r, "m", chunkWrite("d", 1, content(16, possBlock))) // still reads blk at block 0
	p3 := commitBlocks(t, r, "m", chunkWrite("d", 0, content(19, possBlock))) // block 0 replaced

	row, err := r.c.chunkByHash(ctx, h)
	require.NoError(t, err)
	f, err := os.OpenFile(packPath(r.c.dir, row.pack), os.O_RDWR, 0)
	require.NoError(t, err)
	pos := row.off + row.length/2
	b := []byte{0}
	_, err = f.ReadAt(b, pos)
	require.NoError(t, err)
	b[0] ^= 0x10
	_, err = f.WriteAt(b, pos)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	r.c.files.closeAll()

	rep, err := r.Verify(ctx, VerifyOptions{ReadData: true})
	require.NoError(t, err)
	require.Len(t, rep.Damaged, 1, "the flipped byte is found")
	require.Equal(t, h, rep.Damaged[0].Hash)
	n, err := r.MarkDamaged(ctx, []Hash{h}, "verify")
	require.NoError(t, err)
	require.Equal(t, 1, n)

	pts, err := r.Points(ctx, "m")
	require.NoError(t, err)
	damaged := map[int64]bool{}
	for _, p := range pts {
		damaged[p.ID] = p.Damaged
	}
	require.Equal(t, map[int64]bool{p1.ID: true, p2.ID: true, p3.ID: false}, damaged)
	has, err := r.HasChunks(ctx, []Hash{h})
	require.NoError(t, err)
	require.Equal(t, []bool{false}, has, "a damaged chunk is not offered for dedup")
	has, err = r.HasChunksOf(ctx, []string{"m"}, []Hash{h})
	require.NoError(t, err)
	require.Equal(t, []bool{false}, has)
	p, err := r.BeginPoint(ctx, "m", possDisks())
	require.NoError(t, err)
	err = p.Write(ctx, []BlockWrite{{Disk: "d", Block: 5, Hash: h}})
	require.ErrorIs(t, err, ErrChunkMissing, "no hash-only reference to a damaged chunk")

	// The content comes again: stored anew under the same id.
	before, err := r.Stats(ctx)
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("d", 5, blk)}))
	_, err = p.Commit(ctx, CommitInfo{Instant: time.Unix(2e9, 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	after, err := r.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, before.Chunks, after.Chunks, "one row per content, still")
	pts, err = r.Points(ctx, "m")
	require.NoError(t, err)
	for _, p := range pts {
		require.False(t, p.Damaged, "point %d", p.ID)
	}
	d, err := r.OpenDisk(ctx, p1.ID, "d")
	require.NoError(t, err)
	got := make([]byte, possBlock)
	_, err = d.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, blk, got, "the old point reads the new copy")
	rep, err = r.Verify(ctx, VerifyOptions{ReadData: true})
	require.NoError(t, err)
	require.Empty(t, rep.Damaged)
}

// TestGCDropsTheDamageMarkWithTheChunk: a damaged chunk no point reads any
// more is deleted by GC together with its mark, so a chunk that later gets
// the same id is not taken for damaged.
func TestGCDropsTheDamageMarkWithTheChunk(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	blk := content(22, possBlock)
	h := Hash(blake3.Sum256(blk))
	p1 := commitBlocks(t, r, "m", chunkWrite("d", 0, blk))
	commitBlocks(t, r, "m", chunkWrite("d", 0, content(25, possBlock)))
	_, err := r.MarkDamaged(ctx, []Hash{h}, "test")
	require.NoError(t, err)
	require.NoError(t, r.DeletePoint(ctx, p1.ID))
	_, err = r.GC(ctx, GCOptions{})
	require.NoError(t, err)
	dmg, err := r.DamagedHashes(ctx)
	require.NoError(t, err)
	require.Empty(t, dmg)
	var n int
	require.NoError(t, r.c.db.QueryRowContext(ctx, `SELECT count(*) FROM damaged_chunks`).Scan(&n))
	require.Zero(t, n, "no mark outlives its chunk")
}
