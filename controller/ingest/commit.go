package ingest

import (
	"context"
	"errors"
	"sync"

	"github.com/ferrydr/ferry/storage"
)

// Group commit: every durable write of a cycle goes through one committer
// that merges what has queued up while the previous write was syncing into
// a single storage write (one fdatasync, one index commit). Each request is
// answered (ack, need) only when its merged write has returned.

const (
	maxMergeBytes  = 32 << 20 // data bytes merged into one storage write
	maxQueuedBytes = 64 << 20 // data bytes queued per cycle before readers wait
)

var errCycleClosed = errors.New("ingest: the cycle was closed")

type request struct {
	writes []storage.BlockWrite
	bytes  int
	done   func(error)
}

type committer struct {
	pending *storage.Pending
	mu      sync.Mutex
	cond    *sync.Cond
	queue   []*request
	queued  int
	closed  bool
	stopped chan struct{}
}

func newCommitter(p *storage.Pending) *committer {
	c := &committer{pending: p, stopped: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.run()
	return c
}

// submit queues writes; done is called once they are durable (or failed).
// It blocks while too much data is queued (back-pressure on the stream).
func (c *committer) submit(ctx context.Context, writes []storage.BlockWrite, bytes int, done func(error)) error {
	c.mu.Lock()
	for c.queued > 0 && c.queued+bytes > maxQueuedBytes && !c.closed {
		if ctx.Err() != nil {
			c.mu.Unlock()
			return ctx.Err()
		}
		c.cond.Wait()
	}
	if c.closed {
		c.mu.Unlock()
		return errCycleClosed
	}
	c.queue = append(c.queue, &request{writes: writes, bytes: bytes, done: done})
	c.queued += bytes
	c.cond.Broadcast()
	c.mu.Unlock()
	return nil
}

func (c *committer) run() {
	defer close(c.stopped)
	for {
		c.mu.Lock()
		for len(c.queue) == 0 && !c.closed {
			c.cond.Wait()
		}
		if len(c.queue) == 0 && c.closed {
			c.mu.Unlock()
			return
		}
		var batch []*request
		n := 0
		for len(c.queue) > 0 && (len(batch) == 0 || n+c.queue[0].bytes <= maxMergeBytes) {
			r := c.queue[0]
			c.queue = c.queue[1:]
			batch = append(batch, r)
			n += r.bytes
		}
		c.mu.Unlock()

		var all []storage.BlockWrite
		for _, r := range batch {
			all = append(all, r.writes...)
		}
		var err error
		if len(all) > 0 {
			err = c.pending.Write(context.Background(), all)
		}
		if err != nil && len(batch) > 1 {
			// Find whose write failed: retry each alone so one bad batch
			// does not fail the others.
			for _, r := range batch {
				var e error
				if len(r.writes) > 0 {
					e = c.pending.Write(context.Background(), r.writes)
				}
				r.done(e)
			}
		} else {
			for _, r := range batch {
				r.done(err)
			}
		}
		c.mu.Lock()
		c.queued -= n
		c.cond.Broadcast()
		c.mu.Unlock()
	}
}

// drain waits until everything queued so far has been written.
func (c *committer) drain() {
	done := make(chan struct{})
	if err := c.submit(context.Background(), nil, 0, func(error) { close(done) }); err != nil {
		return
	}
	<-done
}

// close stops the committer after the queue is written.
func (c *committer) close() {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
	<-c.stopped
}
