package storage

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestFoldInSlicesKeepsEveryPointReadable: with a small level, rounds of
// sliced folds run between the writes of many points. Between slices
// (both phases seen), every block of the newest point and of an earlier
// one reads back as the test kept it, through the paths that do not fold
// first; no change row of the main tables names a chunk missing from
// them (what the queries that join the two rely on); and at the end every
// point reads back whole.
func TestFoldInSlicesKeepsEveryPointReadable(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{RecentLimit: 96})
	const blocks = 256
	d := newRecentDisk(blocks)
	type kept struct {
		pt  Point
		img []byte
	}
	var points []kept
	var disk int64
	var midChunks, midChanges int // checks made between a round's slices, by phase
	rng := rand.New(rand.NewPCG(7, 0))
	for i := range 40 {
		var ws []BlockWrite
		for _, b := range rng.Perm(blocks)[:24] {
			ws = append(ws, d.write(b, uint64(rng.IntN(200))+1)) // repeated contents: dedup across points
		}
		pt := commitWrites(t, r, d.spec, ws, int64(i+1))
		points = append(points, kept{pt, bytes.Clone(d.img)})
		if disk == 0 {
			disk = r.c.recent.anyDisk(t)
		}

		r.c.writeMu.Lock()
		if f := r.c.fold; f != nil && f.next > 0 {
			if f.next < foldChunkSlices {
				midChunks++
			} else {
				midChanges++
			}
		}
		r.c.writeMu.Unlock()
		var orphans int
		require.NoError(t, r.c.db.QueryRow(`SELECT count(*) FROM changes c LEFT JOIN chunks k ON k.id = c.chunk_id
			WHERE c.chunk_id IS NOT NULL AND k.id IS NULL`).Scan(&orphans))
		require.Zero(t, orphans, "point %d: change rows of the main tables name chunks that are not in them", i+1)

		for _, k := range []kept{points[len(points)-1], points[rng.IntN(len(points))]} {
			for b := range blocks {
				blk, err := r.blockAt(ctx, disk, int64(b), k.pt.ID, tbs)
				require.NoError(t, err)
				require.True(t, bytes.Equal(k.img[b*tbs:(b+1)*tbs], blk), "point %d block %d", k.pt.ID, b)
			}
		}
	}
	require.Positive(t, midChunks, "no check ran between the chunk slices of a round")
	require.Positive(t, midChanges, "no check ran between the change slices of a round")
	for _, k := range points {
		requireDiskBytes(t, r, k.pt, "sda", k.img)
	}
}
