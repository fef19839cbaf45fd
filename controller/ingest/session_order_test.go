package ingest

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

const testBS = 64 << 10

func newTestIngest(t *testing.T) (*Ingest, *storage.Repo) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	require.NoError(t, storage.Create(ctx, dir, storage.CreateOptions{PackSize: storage.MinPackSize}))
	r, err := storage.Open(ctx, dir, storage.OpenOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	g, err := New(Config{Repo: r})
	require.NoError(t, err)
	t.Cleanup(g.Close)
	return g, r
}

func randomBlock(seed uint64) []byte {
	b := make([]byte, testBS)
	var key [32]byte
	key[0], key[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(key).Read(b)
	return b
}

func blockWrite(block int64, data []byte) storage.BlockWrite {
	h := storage.Hash(blake3.Sum256(data))
	return storage.BlockWrite{Disk: "d", Block: block, Hash: h,
		Chunk: &storage.Chunk{Hash: h, Codec: storage.CodecNone, Data: data, PlainLen: len(data)}}
}

func beginReq() msg.CycleBeginRequest {
	return msg.CycleBeginRequest{Machine: "m", Map: msg.MapState{Valid: true},
		Disks: []msg.DiskInfo{{Name: "d", Size: 2048 * testBS, BlockSize: testBS}}}
}

// TestOldSessionsWritesLandBeforeTheNewSessions: session 1's cycle has
// 60 MiB of blocks queued for the pending point, the last of them block
// 7 with content v1, when its session drops (Forget) and session 2 begins
// a cycle into the same pending point and writes block 7 = v2 at once.
// The pending point must end with v2: every queued write of the old
// cycle lands before the new cycle's first write (Begin waits for them),
// never after. Without that, the new write went first and the old queue
// overwrote it. Session 1 can no longer name the cycle either.
func TestOldSessionsWritesLandBeforeTheNewSessions(t *testing.T) {
	ctx := context.Background()
	g, r := newTestIngest(t)
	s1, s2 := WithSession(ctx, 1), WithSession(ctx, 2)

	b1, err := g.Begin(s1, "ag", beginReq())
	require.NoError(t, err)
	c1, err := g.cycleFor(s1, "ag", uint64(b1.Cycle))
	require.NoError(t, err)
	// Queue 30 requests of 2 MiB, then block 7 = v1, without waiting.
	const reqs, per = 30, 32
	batches := make([][]storage.BlockWrite, reqs)
	for i := range reqs {
		for j := range per {
			b := int64(100 + i*per + j)
			batches[i] = append(batches[i], blockWrite(b, randomBlock(uint64(b))))
		}
	}
	v1, v2 := randomBlock(1), randomBlock(2)
	done1 := make(chan error, reqs+1)
	for _, ws := range batches {
		require.NoError(t, c1.commits.submit(ctx, ws, per*testBS, func(err error) { done1 <- err }))
	}
	require.NoError(t, c1.commits.submit(ctx, []storage.BlockWrite{blockWrite(7, v1)}, testBS, func(err error) { done1 <- err }))
	c1.commits.mu.Lock()
	queued := c1.commits.queued
	c1.commits.mu.Unlock()
	require.Greater(t, queued, 16<<20, "precondition: the old cycle still has most of its queue when the new one begins")

	g.Forget("ag") // session 1 dropped
	b2, err := g.Begin(s2, "ag", beginReq())
	require.NoError(t, err)
	require.Equal(t, b1.Cycle, b2.Cycle, "the same pending point is resumed")
	c2, err := g.cycleFor(s2, "ag", uint64(b2.Cycle))
	require.NoError(t, err)
	done2 := make(chan error, 1)
	require.NoError(t, c2.commits.submit(ctx, []storage.BlockWrite{blockWrite(7, v2)}, testBS, func(err error) { done2 <- err }))
	require.NoError(t, <-done2)
	select {
	case <-c1.commits.stopped:
	case <-time.After(time.Minute):
		t.Fatal("the old cycle's committer never stopped")
	}
	for range reqs + 1 {
		require.NoError(t, <-done1, "queued before the drop: written, not dropped")
	}

	p, err := r.PendingPoint(ctx, "m")
	require.NoError(t, err)
	var got storage.Hash
	require.NoError(t, p.Blocks(ctx, "d", func(b int64, h storage.Hash, zero bool) error {
		if b == 7 {
			got = h
		}
		return nil
	}))
	require.Equal(t, storage.Hash(blake3.Sum256(v2)), got, "block 7 must hold the new session's content (v2), not the old queue's (v1)")

	_, err = g.cycleFor(s1, "ag", uint64(b2.Cycle))
	require.ErrorIs(t, err, protocol.ErrFailedPrecondition, "session 1 cannot name session 2's cycle")
	require.ErrorIs(t, c1.commits.submit(ctx, nil, 0, func(error) {}), errCycleClosed)
}
