package storage

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCommitDropsADiskTheLastAttemptLeftOut: a pending point begun with
// disks a and b (blocks of both written), then begun again with a alone
// (b removed from the machine), commits with a alone, and the rows the
// first attempt wrote of b are gone: b added back in a later point reads
// zeros there, not the abandoned attempt's bytes — as a rebuild from the
// packs, which never recorded them, would read it too.
func TestCommitDropsADiskTheLastAttemptLeftOut(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	a := DiskSpec{Name: "a", Size: 8 * tbs, BlockSize: tbs}
	b := DiskSpec{Name: "b", Size: 8 * tbs, BlockSize: tbs}
	p, err := r.BeginPoint(ctx, "m", []DiskSpec{a, b})
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("a", 1, content(1, tbs)), chunkWrite("b", 3, content(3, tbs))}))

	p2, err := r.BeginPoint(ctx, "m", []DiskSpec{a})
	require.NoError(t, err)
	require.Equal(t, p.ID, p2.ID, "the same pending point")
	require.NoError(t, p2.Write(ctx, []BlockWrite{chunkWrite("a", 2, content(2, tbs))}))
	pt, err := p2.Commit(ctx, CommitInfo{Instant: time.Unix(1, 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	require.Equal(t, []DiskSpec{a}, pt.Disks, "the committed point lists the last attempt's disks")
	_, err = r.OpenDisk(ctx, pt.ID, "b")
	require.ErrorIs(t, err, ErrNotFound)

	p3, err := r.BeginPoint(ctx, "m", []DiskSpec{a, b})
	require.NoError(t, err)
	pt3, err := p3.Commit(ctx, CommitInfo{Instant: time.Unix(2, 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	d, err := r.OpenDisk(ctx, pt3.ID, "b")
	require.NoError(t, err)
	got, err := d.ReadBlock(ctx, 3)
	require.NoError(t, err)
	require.Equal(t, make([]byte, tbs), got, "the abandoned attempt's block of b reads through")
	da, err := r.OpenDisk(ctx, pt3.ID, "a")
	require.NoError(t, err)
	for blk, seed := range map[int64]uint64{1: 1, 2: 2} {
		got, err := da.ReadBlock(ctx, blk)
		require.NoError(t, err)
		require.Equal(t, content(seed, tbs), got, "disk a block %d", blk)
	}
}
