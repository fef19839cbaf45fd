package storage

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPruneExceptKeepsThePoint: retention past every point but the newest
// deletes them all except the kept one (a drill's verified point), whose
// blocks still read back; Prune alone deletes it too.
func TestPruneExceptKeepsThePoint(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	disks := []DiskSpec{{Name: "d", Size: 2 * tbs, BlockSize: tbs}}
	var ids []int64
	want := map[int64][]byte{}
	for i := 1; i <= 4; i++ {
		p, err := r.BeginPoint(ctx, "m", disks)
		require.NoError(t, err)
		data := content(uint64(i), tbs)
		require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("d", 0, data)}))
		pt, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(int64(i), 0), Consistency: CrashConsistent})
		require.NoError(t, err)
		ids = append(ids, pt.ID)
		want[pt.ID] = data
	}
	n, err := r.PruneExcept(ctx, "m", time.Unix(100, 0), ids[1])
	require.NoError(t, err)
	require.Equal(t, 2, n, "points 1 and 3 go; 2 is kept, 4 is the newest")
	pts, err := r.Points(ctx, "m")
	require.NoError(t, err)
	require.Len(t, pts, 2)
	require.Equal(t, []int64{ids[1], ids[3]}, []int64{pts[0].ID, pts[1].ID})
	d, err := r.OpenDisk(ctx, ids[1], "d")
	require.NoError(t, err)
	got := make([]byte, tbs)
	_, err = d.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, want[ids[1]], got, "the kept point reads its own bytes")

	n, err = r.Prune(ctx, "m", time.Unix(100, 0))
	require.NoError(t, err)
	require.Equal(t, 1, n, "Prune keeps only the newest")
}
