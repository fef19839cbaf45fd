package storage

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// TestGroupCommitWritesTogetherAndRefusesAStaleWriterAlone: writers that
// queue while another holds the write lock are committed by one append
// (one fdatasync); a chunk two of them bring is stored once; a writer
// whose point is no longer pending fails alone with ErrNotFound while the
// others commit, and its chunk is not indexed. Every block reads back as
// written.
func TestGroupCommitWritesTogetherAndRefusesAStaleWriterAlone(t *testing.T) {
	ctx := context.Background()
	var appends atomic.Int64
	r, dir := newTestRepo(t, CreateOptions{}, OpenOptions{Failpoint: func(name string) {
		if name == FailPackAppended {
			appends.Add(1)
		}
	}})
	disks := []DiskSpec{{Name: "d", Size: 16 * tbs, BlockSize: tbs}}
	shared := content(1000, tbs)
	own := func(m string) []byte { return content(uint64(2000+int(m[0])), tbs) }

	// group writes block 0 (shared) and block 1 (the machine's own) of
	// every machine at once; stale's point is committed before it writes.
	group := func(machines []string, stale string) (map[string]error, map[string]*Pending, int64) {
		pend := map[string]*Pending{}
		for _, m := range machines {
			p, err := r.BeginPoint(ctx, m, disks)
			require.NoError(t, err)
			pend[m] = p
		}
		if stale != "" {
			_, err := pend[stale].Commit(ctx, CommitInfo{Instant: time.Now(), Consistency: CrashConsistent})
			require.NoError(t, err)
		}
		r.c.writeMu.Lock()
		unlock := r.c.writeMu.Unlock
		var mu sync.Mutex
		errs := map[string]error{}
		var wg sync.WaitGroup
		for _, m := range machines {
			wg.Go(func() {
				err := pend[m].Write(ctx, []BlockWrite{chunkWrite("d", 0, shared), chunkWrite("d", 1, own(m))})
				mu.Lock()
				errs[m] = err
				mu.Unlock()
			})
		}
		require.Eventually(t, func() bool {
			r.c.queue.mu.Lock()
			defer r.c.queue.mu.Unlock()
			return len(r.c.queue.reqs) == len(machines)
		}, 10*time.Second, time.Millisecond, "every writer queued behind the lock")
		before := appends.Load()
		unlock()
		wg.Wait()
		return errs, pend, appends.Load() - before
	}
	readBack := func(p *Pending, m string) {
		pt, err := p.Commit(ctx, CommitInfo{Instant: time.Now(), Consistency: CrashConsistent})
		require.NoError(t, err)
		d, err := r.OpenDisk(ctx, pt.ID, "d")
		require.NoError(t, err)
		for blk, want := range [][]byte{shared, own(m)} {
			got, err := d.ReadBlock(ctx, int64(blk))
			require.NoError(t, err)
			require.True(t, bytes.Equal(want, got), "machine %s block %d reads back as written", m, blk)
		}
	}

	errs, pend, n := group([]string{"a", "b", "c"}, "")
	for m, err := range errs {
		require.NoError(t, err, "machine %s", m)
	}
	require.Equal(t, int64(1), n, "three writers, one append and fdatasync")
	// Before the commits write their change records (which name hashes
	// too), a hash is in the packs once per chunk record.
	packs := packBytes(t, dir)
	sharedHash, ownHash := blake3.Sum256(shared), blake3.Sum256(own("a"))
	require.Equal(t, 1, bytes.Count(packs, ownHash[:]))
	require.Equal(t, 1, bytes.Count(packs, sharedHash[:]), "the chunk all three brought is stored once")
	for _, m := range []string{"a", "b", "c"} {
		readBack(pend[m], m)
	}

	errs, pend, n = group([]string{"d", "e", "f"}, "f")
	require.ErrorIs(t, errs["f"], ErrNotFound, "the writer of a committed point is refused")
	require.ErrorContains(t, errs["f"], "no longer pending")
	require.NoError(t, errs["d"])
	require.NoError(t, errs["e"])
	require.Equal(t, int64(2), n, "the refused group is appended again without the stale writer")
	readBack(pend["d"], "d")
	readBack(pend["e"], "e")
	stored, err := r.c.lookupHashes(ctx, []Hash{blake3.Sum256(own("f"))})
	require.NoError(t, err)
	require.Empty(t, stored, "the stale writer's chunk is not indexed")
}

// packBytes is every pack file's content, concatenated.
func packBytes(t *testing.T, dir string) []byte {
	t.Helper()
	var all []byte
	require.NoError(t, filepath.WalkDir(filepath.Join(dir, packsDir), func(path string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		all = append(all, b...)
		return err
	}))
	return all
}
