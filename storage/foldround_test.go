package storage

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFoldInTwoStepsKeepsEveryPointReadable: with a small level, fold
// rounds run between the writes of many points. Between a round's steps,
// every block of the newest point and of an earlier
// one reads back as the test kept it, through the paths that do not fold
// first; no change row of the main tables names a chunk missing from
// them (what the queries that join the two rely on); and at the end every
// point reads back whole. The first time a round is between its steps,
// the repository is closed and opened again (what a crash there leaves:
// both steps are transactions), and the level comes back with change
// rows as they were.
func TestFoldInTwoStepsKeepsEveryPointReadable(t *testing.T) {
	ctx := context.Background()
	oo := OpenOptions{RecentLimit: 96}
	r, dir := newTestRepo(t, CreateOptions{}, oo)
	const blocks = 256
	d := newRecentDisk(blocks)
	type kept struct {
		pt  Point
		img []byte
	}
	var points []kept
	var disk int64
	var mid int // checks made between a round's steps
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
		between := r.c.fold != nil
		r.c.writeMu.Unlock()
		if between {
			mid++
		}
		if between && mid == 1 {
			rowsBefore, chunksBefore := r.c.recent.rows, len(r.c.recent.chunks)
			require.NoError(t, r.Close())
			var err error
			r, err = Open(ctx, dir, oo)
			require.NoError(t, err)
			t.Cleanup(func() { r.Close() })
			rows, chunks := r.c.recent.rows, len(r.c.recent.chunks)
			require.Positive(t, rows, "reopened between the steps: no change rows in the level")
			require.Equal(t, []int{rowsBefore, chunksBefore}, []int{rows, chunks}, "the level's change and chunk rows after reopening")
		}
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
	require.Positive(t, mid, "no check ran between the steps of a round")
	for _, k := range points {
		requireDiskBytes(t, r, k.pt, "sda", k.img)
	}
}

// TestFoldRoundLeavesTheRowsOfThePause: a round's second step moves the
// change rows the level held when the round started and no others. A
// block written again by the same pending point during the pause keeps
// its later row in the level (its earlier row is now in changes), and the
// point commits and reads back with the later content, before and after
// the repository is opened again.
func TestFoldRoundLeavesTheRowsOfThePause(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	oo := OpenOptions{RecentLimit: 8, Clock: func() time.Time { return now }}
	r, dir := newTestRepo(t, CreateOptions{}, oo)
	d := newRecentDisk(16)
	p1 := commitWrites(t, r, d.spec, []BlockWrite{d.write(0, 1)}, 1) // below the limit: in the level
	v1 := bytes.Clone(d.img)

	p, err := r.BeginPoint(ctx, "m1", d.spec)
	require.NoError(t, err)
	var first []BlockWrite
	for b := range 6 {
		first = append(first, d.write(b, uint64(10+b)))
	}
	require.NoError(t, p.Write(ctx, first)) // 14 rows: the round starts
	l := r.c.recent
	require.NotNil(t, r.c.fold, "the level passed its limit and no round started")
	require.Zero(t, len(l.chunks), "the first step left chunk rows in the mirror")
	require.Equal(t, 7, l.rows)

	// The pause: the clock stands still, so the second step waits. Block
	// 12 is written zeros (content's seeds 2 mod 3).
	require.NoError(t, p.Write(ctx, []BlockWrite{d.write(3, 99), d.write(12, 98)}))
	require.NotNil(t, r.c.fold)
	require.Equal(t, 8, l.rows, "block 3's second row replaced its first in the mirror")

	now = now.Add(time.Hour)
	require.NoError(t, p.Write(ctx, []BlockWrite{d.write(14, 97)}))
	require.Nil(t, r.c.fold, "the second step did not run once the pause was over")
	require.Equal(t, 3, l.rows, "the level keeps the pause's rows (blocks 3, 12, 14)")
	require.Len(t, l.chunks, 2, "the pause's chunks stay in the level (block 12's content is zeros: no chunk)")
	disk := l.anyDisk(t)
	var inChanges, inLevel int
	require.NoError(t, r.c.db.QueryRow(`SELECT count(*) FROM changes WHERE disk_id=? AND block=3`, disk).Scan(&inChanges))
	require.NoError(t, r.c.db.QueryRow(`SELECT count(*) FROM recent_changes WHERE disk_id=? AND block=3`, disk).Scan(&inLevel))
	require.Equal(t, []int{1, 1}, []int{inChanges, inLevel}, "block 3: its first row in changes, its second in the level")

	p2, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(2, 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	require.EqualValues(t, 8, p2.Changed, "blocks 0–5, 12 and 14")
	requireDiskBytes(t, r, p1, "sda", v1)
	requireDiskBytes(t, r, p2, "sda", d.img)
	require.NoError(t, r.Close())

	r, err = Open(ctx, dir, oo)
	require.NoError(t, err)
	defer r.Close()
	requireDiskBytes(t, r, p1, "sda", v1)
	requireDiskBytes(t, r, p2, "sda", d.img)
}
