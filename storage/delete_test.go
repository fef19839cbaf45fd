package storage

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// TestDeleteKeepsEveryOtherPoint is a randomized model check of point
// deletion: commits, pending writes, deletions of any point (oldest,
// middle, newest), prunes and GC sweeps in random order; after every step
// every retained point reads exactly its snapshot and the head state (what
// the next point is a delta against) is unchanged. Then a Rebuild must give
// the same points.
func TestDeleteKeepsEveryOtherPoint(t *testing.T) {
	ctx := context.Background()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 5))
	r, dir := newTestRepo(t, CreateOptions{}, OpenOptions{})
	const blocks = 12
	disks := []DiskSpec{{Name: "d", Size: blocks * tbs, BlockSize: tbs}}
	snaps := map[int64][]byte{}
	head := make([]byte, blocks*tbs)
	var pending *Pending
	instant := 0
	checkAll := func(step int) {
		t.Helper()
		pts, err := r.Points(ctx, "m")
		require.NoError(t, err)
		require.Len(t, pts, len(snaps), "step %d", step)
		for _, pt := range pts {
			require.True(t, bytes.Equal(snaps[pt.ID], diskImage(t, r, pt.ID, "d")), "step %d: point %d", step, pt.ID)
		}
		got := make(map[int64]Hash)
		zero := map[int64]bool{}
		err = r.HeadBlocks(ctx, "m", "d", func(b int64, h Hash, z bool) error {
			got[b], zero[b] = h, z
			return nil
		})
		if len(snaps) == 0 && pending == nil {
			return
		}
		require.NoError(t, err)
		for b := int64(0); b < blocks; b++ {
			want := head[b*tbs : (b+1)*tbs]
			if isZero(want) {
				require.True(t, zero[b] || got[b] == Hash{}, "step %d: head block %d", step, b)
			} else {
				require.Equal(t, Hash(blake3.Sum256(want)), got[b], "step %d: head block %d", step, b)
			}
		}
	}
	for step := 0; step < 300; step++ {
		switch op := rng.IntN(10); {
		case op < 5: // write some blocks (pending), maybe commit
			if pending == nil {
				p, err := r.BeginPoint(ctx, "m", disks)
				require.NoError(t, err)
				pending = p
			}
			var ws []BlockWrite
			for i := 0; i < 1+rng.IntN(3); i++ {
				b := int64(rng.IntN(blocks))
				data := make([]byte, tbs)
				if rng.IntN(4) > 0 {
					data = content(uint64(rng.IntN(6))*3+1, tbs)
				}
				copy(head[b*tbs:], data)
				ws = append(ws, chunkWrite("d", b, data))
			}
			require.NoError(t, pending.Write(ctx, ws))
			if rng.IntN(3) > 0 {
				instant++
				pt, err := pending.Commit(ctx, CommitInfo{Instant: time.Unix(int64(instant), 0), Consistency: CrashConsistent})
				require.NoError(t, err)
				snaps[pt.ID] = append([]byte(nil), head...)
				pending = nil
			}
		case op < 8: // delete a random point
			if len(snaps) == 0 {
				continue
			}
			var ids []int64
			for id := range snaps {
				ids = append(ids, id)
			}
			id := ids[rng.IntN(len(ids))]
			require.NoError(t, r.DeletePoint(ctx, id))
			delete(snaps, id)
		case op < 9: // prune the older half
			pts, err := r.Points(ctx, "m")
			require.NoError(t, err)
			if len(pts) < 2 {
				continue
			}
			cut := pts[len(pts)/2].Instant
			n, err := r.Prune(ctx, "m", cut)
			require.NoError(t, err)
			for _, pt := range pts[:n] {
				delete(snaps, pt.ID)
			}
		default:
			_, err := r.GC(ctx, GCOptions{RepackBelow: 0.9})
			require.NoError(t, err)
		}
		checkAll(step)
	}
	if pending != nil {
		instant++
		pt, err := pending.Commit(ctx, CommitInfo{Instant: time.Unix(int64(instant), 0), Consistency: CrashConsistent})
		require.NoError(t, err)
		snaps[pt.ID] = append([]byte(nil), head...)
		pending = nil
	}
	checkAll(-1)
	require.NoError(t, r.Close())
	_, err := Rebuild(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	r, err = Open(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	defer r.Close()
	checkAll(-2)
}

// TestConcurrentWritersShareChunks: two machines' pending points write the
// same content at the same time (each looks its chunks up, then stores the
// ones it did not find): every write succeeds, each chunk is stored once,
// and both points read back their blocks.
func TestConcurrentWritersShareChunks(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	const blocks = 64
	disks := []DiskSpec{{Name: "d", Size: blocks * tbs, BlockSize: tbs}}
	want := make([]byte, blocks*tbs)
	for b := 0; b < blocks; b++ {
		copy(want[b*tbs:], content(uint64(b)+100, tbs))
	}
	ids := make([]int64, 2)
	errs := make(chan error, 2)
	for i, m := range []string{"m1", "m2"} {
		go func() {
			p, err := r.BeginPoint(ctx, m, disks)
			if err != nil {
				errs <- err
				return
			}
			for b := 0; b < blocks; b++ {
				if err := p.Write(ctx, []BlockWrite{chunkWrite("d", int64(b), want[b*tbs:(b+1)*tbs])}); err != nil {
					errs <- err
					return
				}
			}
			pt, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(1, 0), Consistency: CrashConsistent})
			ids[i] = pt.ID
			errs <- err
		}()
	}
	for range 2 {
		require.NoError(t, <-errs)
	}
	for _, id := range ids {
		require.True(t, bytes.Equal(want, diskImage(t, r, id, "d")), "point %d", id)
	}
	distinct := map[Hash]bool{}
	for b := 0; b < blocks; b++ {
		if blk := want[b*tbs : (b+1)*tbs]; !isZero(blk) {
			distinct[blake3.Sum256(blk)] = true
		}
	}
	var n int
	require.NoError(t, r.c.db.QueryRow(`SELECT count(*) FROM chunks`).Scan(&n))
	require.Equal(t, len(distinct), n, "each chunk stored once")
}

// TestPendingBlocksListsOnlyItsOwnRows: a pending point lists the blocks it
// stored itself (data and explicit zeros), ascending, not those of
// committed points.
func TestPendingBlocksListsOnlyItsOwnRows(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	disks := []DiskSpec{{Name: "d", Size: 16 * tbs, BlockSize: tbs}}
	p, err := r.BeginPoint(ctx, "m", disks)
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("d", 1, content(1, tbs)), chunkWrite("d", 2, content(2, tbs))}))
	_, err = p.Commit(ctx, CommitInfo{Instant: time.Unix(1, 0), Consistency: CrashConsistent})
	require.NoError(t, err)

	p, err = r.BeginPoint(ctx, "m", disks)
	require.NoError(t, err)
	b9 := content(9, tbs)
	require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("d", 9, b9), {Disk: "d", Block: 2, Zero: true}}))
	type row struct {
		block int64
		hash  Hash
		zero  bool
	}
	var got []row
	require.NoError(t, p.Blocks(ctx, "d", func(b int64, h Hash, z bool) error {
		got = append(got, row{b, h, z})
		return nil
	}))
	require.Equal(t, []row{{2, Hash{}, true}, {9, Hash(blake3.Sum256(b9)), false}}, got)
	require.ErrorIs(t, p.Blocks(ctx, "nope", func(int64, Hash, bool) error { return nil }), ErrNotFound)
}
