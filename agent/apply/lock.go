package apply

import (
	"context"
	"fmt"
	"sync"
)

// machineLocks serialises the operations on each machine directory: a
// restore stream, a clone, a promote, … of one machine never overlap, so a
// clone copies a set that is at a point and a promote never renames a set
// under a stream's feet. Waiting ends with the caller's context.
type machineLocks struct {
	mu   sync.Mutex
	held map[string]*hold
}

type hold struct {
	what string        // the holder, for the busy message
	done chan struct{} // closed on release
}

// lock takes key (a machine directory) for the operation what.
func (l *machineLocks) lock(ctx context.Context, key, what string) (unlock func(), err error) {
	for {
		l.mu.Lock()
		h := l.held[key]
		if h == nil {
			if l.held == nil {
				l.held = map[string]*hold{}
			}
			h = &hold{what: what, done: make(chan struct{})}
			l.held[key] = h
			l.mu.Unlock()
			return func() {
				l.mu.Lock()
				delete(l.held, key)
				l.mu.Unlock()
				close(h.done)
			}, nil
		}
		l.mu.Unlock()
		select {
		case <-h.done:
		case <-ctx.Done():
			// Busy rather than the context's error: the caller learns what
			// it waited for and that trying again later can succeed.
			return nil, fmt.Errorf("%w: %s waited for %s of the same machine and gave up (%v)", ErrBusy, what, h.what, context.Cause(ctx))
		}
	}
}
