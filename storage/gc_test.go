package storage

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// poolContent is the content of pool entry i (a small pool so writes dedup
// against chunks that retention keeps making unreferenced).
func poolContent(i int) []byte { return content(uint64(9000+i*3+1), tbs) }

func poolIndex(k, b int) int { return (k*7 + b*13) % 9 }

// TestGCOnlineWithConcurrentWrites runs GC in a loop while a writer commits
// points whose blocks dedup against a small pool of chunks that pruning
// keeps unreferencing: no committed point may lose data, hash-only writes
// may only fail with ErrChunkMissing (and then succeed with the chunk), and
// Verify stays clean.
func TestGCOnlineWithConcurrentWrites(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	const blocks = 8
	disks := []DiskSpec{{Name: "d", Size: blocks * tbs, BlockSize: tbs}}
	hashes := make([]Hash, 9)
	for i := range hashes {
		hashes[i] = Hash(blake3.Sum256(poolContent(i)))
	}
	done := make(chan struct{})
	var gcRuns atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	var gcErr error
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := r.GC(ctx, GCOptions{RepackBelow: 0.9}); err != nil {
				gcErr = err
				return
			}
			gcRuns.Add(1)
		}
	}()
	var maxWait time.Duration
	missing := 0
	images := map[int64][]byte{}
	img := make([]byte, blocks*tbs)
	for k := 1; k <= 60; k++ {
		p, err := r.BeginPoint(ctx, "m", disks)
		require.NoError(t, err)
		var ws, full []BlockWrite
		for b := 0; b < blocks; b++ {
			if (k+b)%3 != 0 {
				continue
			}
			i := poolIndex(k, b)
			data := poolContent(i)
			copy(img[b*tbs:], data)
			ws = append(ws, BlockWrite{Disk: "d", Block: int64(b), Hash: hashes[i]})
			full = append(full, chunkWrite("d", int64(b), data))
		}
		has, err := r.HasChunks(ctx, []Hash{ws[0].Hash})
		require.NoError(t, err)
		t0 := time.Now()
		if has[0] {
			err = p.Write(ctx, ws)
			if errors.Is(err, ErrChunkMissing) {
				missing++
				err = p.Write(ctx, full)
			}
		} else {
			err = p.Write(ctx, full)
		}
		maxWait = max(maxWait, time.Since(t0))
		require.NoError(t, err)
		pt, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(int64(k), 0), Consistency: CrashConsistent})
		require.NoError(t, err)
		images[pt.ID] = append([]byte(nil), img...)
		_, err = r.Prune(ctx, "m", time.Unix(int64(k-2), 0))
		require.NoError(t, err)
	}
	close(done)
	wg.Wait()
	require.NoError(t, gcErr)
	require.Positive(t, gcRuns.Load())
	t.Logf("%d GC runs; %d hash-only writes lost the race and were resent; slowest Write %v", gcRuns.Load(), missing, maxWait)
	pts, err := r.Points(ctx, "m")
	require.NoError(t, err)
	require.Len(t, pts, 3)
	for _, pt := range pts {
		require.True(t, bytes.Equal(images[pt.ID], diskImage(t, r, pt.ID, "d")), "point %d", pt.ID)
	}
	rep, err := r.Verify(ctx, VerifyOptions{ReadData: true})
	require.NoError(t, err)
	require.Empty(t, rep.Damaged)
}

// TestGCInterrupted cancels GC in the middle (between chunk-delete
// batches and inside a repack): the repository stays consistent and the
// next GC finishes the job.
func TestGCInterrupted(t *testing.T) {
	for _, at := range []string{FailGCDelete, FailGCRepack} {
		t.Run(at, func(t *testing.T) {
			ctx := context.Background()
			gcCtx, cancel := context.WithCancel(ctx)
			var armed atomic.Bool
			r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{Failpoint: func(name string) {
				if name == at && armed.Load() {
					cancel()
				}
			}})
			disks := []DiskSpec{{Name: "d", Size: 16 * tbs, BlockSize: tbs}}
			img := make([]byte, 16*tbs)
			var last Point
			for k := 1; k <= 40; k++ {
				p, err := r.BeginPoint(ctx, "m", disks)
				require.NoError(t, err)
				var ws []BlockWrite
				for b := 0; b < 16; b += 1 + k%3 {
					data := content(uint64(k*100+b)*3+1, tbs)
					copy(img[b*tbs:], data)
					ws = append(ws, chunkWrite("d", int64(b), data))
				}
				require.NoError(t, p.Write(ctx, ws))
				last, err = p.Commit(ctx, CommitInfo{Instant: time.Unix(int64(k), 0), Consistency: CrashConsistent})
				require.NoError(t, err)
			}
			_, err := r.Prune(ctx, "m", time.Unix(40, 0))
			require.NoError(t, err)
			armed.Store(true)
			_, err = r.GC(gcCtx, GCOptions{RepackBelow: 0.99})
			require.ErrorIs(t, err, context.Canceled)
			armed.Store(false)
			require.Equal(t, img, diskImage(t, r, last.ID, "d"))
			rep, err := r.Verify(ctx, VerifyOptions{ReadData: true})
			require.NoError(t, err)
			require.Empty(t, rep.Damaged)
			g, err := r.GC(ctx, GCOptions{RepackBelow: 0.99})
			require.NoError(t, err)
			t.Logf("second GC: %+v", g)
			require.Equal(t, img, diskImage(t, r, last.ID, "d"))
		})
	}
}

// TestDeleteMachineStaysDeleted: after DeleteMachine a machine of the same
// name starts from an empty disk, also after a Rebuild.
func TestDeleteMachineStaysDeleted(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t, CreateOptions{}, OpenOptions{})
	disks := []DiskSpec{{Name: "d", Size: 4 * tbs, BlockSize: tbs}}
	p, err := r.BeginPoint(ctx, "m", disks)
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("d", 1, content(31, tbs)), chunkWrite("d", 2, content(34, tbs))}))
	_, err = p.Commit(ctx, CommitInfo{Consistency: CrashConsistent})
	require.NoError(t, err)
	require.NoError(t, r.DeleteMachine(ctx, "m"))
	ms, err := r.Machines(ctx)
	require.NoError(t, err)
	require.Empty(t, ms)

	p, err = r.BeginPoint(ctx, "m", disks)
	require.NoError(t, err)
	b0 := content(37, tbs)
	require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("d", 0, b0)}))
	pt, err := p.Commit(ctx, CommitInfo{Consistency: CrashConsistent})
	require.NoError(t, err)
	want := make([]byte, 4*tbs)
	copy(want, b0)
	require.Equal(t, want, diskImage(t, r, pt.ID, "d"))
	var head []int64
	require.NoError(t, r.HeadBlocks(ctx, "m", "d", func(b int64, h Hash, zero bool) error {
		head = append(head, b)
		return nil
	}))
	require.Equal(t, []int64{0}, head)

	require.NoError(t, r.Close())
	_, err = Rebuild(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	r2, err := Open(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	defer r2.Close()
	pts, err := r2.Points(ctx, "m")
	require.NoError(t, err)
	require.Len(t, pts, 1)
	require.Equal(t, want, diskImage(t, r2, pts[0].ID, "d"))
}
