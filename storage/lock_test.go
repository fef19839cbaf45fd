package storage

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestOpenWaitsForALockACopiedDescriptorHolds reproduces what a fork does
// to the repository's lock: a child forked by any goroutine holds a copy
// of the lock's descriptor until it execs, so the lock outlives Close for
// that moment. Open must wait that moment out, and still refuse a
// repository that stays held.
func TestOpenWaitsForALockACopiedDescriptorHolds(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t, CreateOptions{}, OpenOptions{})
	// dup shares the open file description, as a forked child's copy does.
	copied, err := unix.Dup(int(r.c.lock.Fd()))
	require.NoError(t, err)
	require.NoError(t, r.Close())

	_, err = Open(ctx, dir, OpenOptions{Logger: testLogger(t)})
	require.ErrorIs(t, err, ErrLocked, "the copy still holds the lock: the precondition of this test")

	released := make(chan struct{})
	go func() {
		time.Sleep(lockWait / 10)
		unix.Close(copied)
		close(released)
	}()
	start := time.Now()
	r2, err := Open(ctx, dir, OpenOptions{Logger: testLogger(t)})
	require.NoError(t, err, "Open must wait for a lock released within lockWait")
	select {
	case <-released:
	default:
		t.Fatal("Open succeeded while the copied descriptor still held the lock")
	}
	require.Less(t, time.Since(start), lockWait, "Open waited longer than the lock was held")

	// A holder that does not let go still gets ErrLocked.
	_, err = Open(ctx, dir, OpenOptions{Logger: testLogger(t)})
	require.ErrorIs(t, err, ErrLocked)
	require.NoError(t, r2.Close())
}
