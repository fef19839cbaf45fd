package ingest

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/storage"
)

// TestCommitterAnswersInOrderAndKeepsTheLaterBlock: requests are answered
// in the order they were queued, and when a large request and then a small
// one both write block 7 in separate storage writes, the point holds the
// small (later) one's content. (A committer that overlapped writes without
// ordering same-block writes failed this: the small write overtook.)
func TestCommitterAnswersInOrderAndKeepsTheLaterBlock(t *testing.T) {
	ctx := context.Background()
	_, repo := newTestIngest(t)
	p, err := repo.BeginPoint(ctx, "m", []storage.DiskSpec{{Name: "d", Size: 2048 * testBS, BlockSize: testBS}})
	require.NoError(t, err)
	// The requests are queued before the committer starts, each of the
	// first two claiming a whole merge's bytes: request 1 cannot merge
	// into request 0's write and becomes the next flight at once.
	c := &committer{pending: p, stopped: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)

	var mu sync.Mutex
	var answered []int
	answer := func(i int) func(error) {
		return func(err error) {
			require.NoError(t, err)
			mu.Lock()
			answered = append(answered, i)
			mu.Unlock()
		}
	}
	// Request 0: 40 blocks, block 7 = v1 among them (slow to prepare).
	var big []storage.BlockWrite
	for b := range int64(40) {
		big = append(big, blockWrite(b, randomBlock(uint64(1000+b))))
	}
	v2 := randomBlock(2)
	require.NoError(t, c.submit(ctx, big, maxMergeBytes/2, answer(0)))
	require.NoError(t, c.submit(ctx, []storage.BlockWrite{blockWrite(7, v2)}, maxMergeBytes/2+1, answer(1)))
	// Requests 2..9 write blocks of their own.
	for i := 2; i < 10; i++ {
		require.NoError(t, c.submit(ctx, []storage.BlockWrite{blockWrite(int64(100+i), randomBlock(uint64(i)))}, testBS, answer(i)))
	}
	go c.run()
	c.drain()
	c.close()
	require.Equal(t, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, answered)

	pt, err := p.Commit(ctx, storage.CommitInfo{Instant: time.Now(), Consistency: storage.CrashConsistent})
	require.NoError(t, err)
	d, err := repo.OpenDisk(ctx, pt.ID, "d")
	require.NoError(t, err)
	got, err := d.ReadBlock(ctx, 7)
	require.NoError(t, err)
	require.True(t, bytes.Equal(v2, got), "block 7 holds the earlier request's content: the later write raced it")
}
