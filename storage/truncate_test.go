package storage

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// commitSized makes one point of machine "m" with disk "d" of size blocks
// (tbs each), writing the given blocks.
func commitSized(t *testing.T, r *Repo, blocks int64, writes map[int64][]byte) Point {
	t.Helper()
	ctx := context.Background()
	p, err := r.BeginPoint(ctx, "m", []DiskSpec{{Name: "d", Size: blocks * tbs, BlockSize: tbs}})
	require.NoError(t, err)
	var ws []BlockWrite
	for b, data := range writes {
		ws = append(ws, chunkWrite("d", b, data))
	}
	if len(ws) > 0 {
		require.NoError(t, p.Write(ctx, ws))
	}
	pt, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(int64(p.ID), 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	return pt
}

// fullImage is 8 blocks of data, block b = content(100+b).
func fullImage() (map[int64][]byte, []byte) {
	w := map[int64][]byte{}
	var img []byte
	for b := int64(0); b < 8; b++ {
		c := content(uint64(100+3*b), tbs) // seed%3 == 1: random, never zero
		w[b] = c
		img = append(img, c...)
	}
	return w, img
}

func requireImage(t *testing.T, r *Repo, id int64, want []byte) {
	t.Helper()
	got := diskImage(t, r, id, "d")
	require.Equal(t, len(want), len(got), "point %d size", id)
	if !bytes.Equal(want, got) {
		for b := 0; b < len(want); b += tbs {
			require.Equal(t, want[b:b+tbs], got[b:b+tbs], "point %d block %d", id, b/tbs)
		}
	}
}

// TestShrunkBlocksReadZeroAfterGrowth: 8 blocks of data, shrink to 4,
// grow to 8 with no writes: the regrown blocks read zeros, the older
// points still read what they held — also after deleting the shrunk point,
// and after a rebuild of the index from the packs.
func TestShrunkBlocksReadZeroAfterGrowth(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t, CreateOptions{}, OpenOptions{})
	w, img := fullImage()
	require.False(t, isZero(img[4*tbs:]), "precondition: the cut blocks hold data")
	p1 := commitSized(t, r, 8, w)
	p2 := commitSized(t, r, 4, nil)
	p3 := commitSized(t, r, 8, nil)
	regrown := append(append([]byte(nil), img[:4*tbs]...), make([]byte, 4*tbs)...)
	requireImage(t, r, p1.ID, img)
	requireImage(t, r, p2.ID, img[:4*tbs])
	requireImage(t, r, p3.ID, regrown)
	require.Equal(t, int64(4), p2.Changed, "the shrinking point records the 4 cut blocks")
	require.Zero(t, p3.Changed, "a point that only grows writes nothing")

	d, err := r.OpenDisk(ctx, p3.ID, "d")
	require.NoError(t, err)
	_, zero, err := d.BlockHash(ctx, 6)
	require.NoError(t, err)
	require.True(t, zero, "hash reads agree with data reads")
	var diff []int64
	require.NoError(t, r.Diff(ctx, "m", "d", p1.ID, p3.ID, func(b int64, _ Hash, zero bool) error {
		require.True(t, zero)
		diff = append(diff, b)
		return nil
	}))
	require.Equal(t, []int64{4, 5, 6, 7}, diff)

	require.NoError(t, r.DeletePoint(ctx, p2.ID))
	requireImage(t, r, p1.ID, img)
	requireImage(t, r, p3.ID, regrown)
	p4 := commitSized(t, r, 8, nil)
	requireImage(t, r, p4.ID, regrown)

	require.NoError(t, r.Close())
	for _, s := range []string{"", "-wal", "-shm"} {
		os.Remove(filepath.Join(dir, indexName+s))
	}
	_, err = Rebuild(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	r2, err := Open(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	defer r2.Close()
	requireImage(t, r2, p1.ID, img)
	requireImage(t, r2, p3.ID, regrown)
	requireImage(t, r2, p4.ID, regrown)
}

// TestPendingRowsBeyondTheFinalSizeAreCut: a cycle of the pending point
// wrote block 6 while the disk had 8 blocks; the cycle that resumes it
// sees 4 blocks and commits. A later point at 8 blocks reads zeros there.
func TestPendingRowsBeyondTheFinalSizeAreCut(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	p1 := commitSized(t, r, 4, map[int64][]byte{0: content(1, tbs)})
	p, err := r.BeginPoint(ctx, "m", []DiskSpec{{Name: "d", Size: 8 * tbs, BlockSize: tbs}})
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("d", 6, content(4, tbs))}))
	p2 := commitSized(t, r, 4, nil) // resumes p with 4 blocks
	require.Equal(t, p.ID, p2.ID)
	p3 := commitSized(t, r, 8, nil)
	want := append(append([]byte(nil), content(1, tbs)...), make([]byte, 7*tbs)...)
	requireImage(t, r, p3.ID, want)
	requireImage(t, r, p1.ID, want[:4*tbs])
}

// TestOlderBuildsShrinkIsRepairedAtNextCommit: rows written by a build
// without tombstones (simulated: the tombstones removed, the disk marked
// unchecked) are cut at the disk's next commit, which then reads zeros
// in the range the disk shrank through.
func TestOlderBuildsShrinkIsRepairedAtNextCommit(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	w, img := fullImage()
	commitSized(t, r, 8, w)
	p2 := commitSized(t, r, 4, nil)
	commitSized(t, r, 6, nil) // grew back to 6 before the upgrade
	_, err := r.c.db.ExecContext(ctx, `DELETE FROM changes WHERE seq=?`, p2.ID)
	require.NoError(t, err)
	_, err = r.c.db.ExecContext(ctx, `UPDATE disks SET truncation_checked=0`)
	require.NoError(t, err)
	p4 := commitSized(t, r, 8, map[int64][]byte{1: content(7, tbs)})
	want := append([]byte(nil), img[:4*tbs]...)
	copy(want[tbs:], content(7, tbs))
	want = append(want, make([]byte, 4*tbs)...)
	requireImage(t, r, p4.ID, want)
	var checked int
	require.NoError(t, r.c.db.QueryRowContext(ctx, `SELECT truncation_checked FROM disks`).Scan(&checked))
	require.Equal(t, 1, checked)
}

// BenchmarkCommitAfterShrink: the cost of a commit of one changed block on
// a disk of 512 blocks, when the disk once had 8192 blocks of data and
// shrank (7,680 tombstone rows beyond its size) and when it never did: the
// same, since a commit that does not shrink looks only at its own rows.
// The shrinking commit itself is reported as shrink_ms.
func BenchmarkCommitAfterShrink(b *testing.B) {
	for _, shrunk := range []bool{false, true} {
		b.Run(map[bool]string{false: "never-shrunk", true: "shrunk-once"}[shrunk], func(b *testing.B) {
			ctx := context.Background()
			r, _ := newTestRepo(b, CreateOptions{}, OpenOptions{Logger: testLogger(b)})
			commit := func(blocks int64, from, n int64) time.Duration {
				p, err := r.BeginPoint(ctx, "m", []DiskSpec{{Name: "d", Size: blocks * tbs, BlockSize: tbs}})
				require.NoError(b, err)
				var ws []BlockWrite
				for i := from; i < from+n; i++ {
					ws = append(ws, chunkWrite("d", i%blocks, content(uint64(3*i+1), tbs)))
				}
				if len(ws) > 0 {
					require.NoError(b, p.Write(ctx, ws))
				}
				t0 := time.Now()
				_, err = p.Commit(ctx, CommitInfo{Consistency: CrashConsistent})
				require.NoError(b, err)
				return time.Since(t0)
			}
			first := int64(512)
			if shrunk {
				first = 8192
			}
			commit(first, 0, first)
			d := commit(512, 0, 0)
			b.ResetTimer()
			var inCommit time.Duration
			for i := 0; i < b.N; i++ {
				inCommit += commit(512, int64(10_000+i), 1)
			}
			b.ReportMetric(float64(inCommit.Microseconds())/1000/float64(b.N), "commit_ms/op")
			b.ReportMetric(float64(d.Microseconds())/1000, "shrink_ms")
		})
	}
}
