package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// maxHeldRecords bounds the log records held while a filesystem is frozen
// (a freeze lasts at most snapshot.MaxFreezeLimit, and the agent logs a
// few records a cycle): past it, records are dropped and counted.
const maxHeldRecords = 4096

// holdDrainWait bounds how long hold waits for records already on their
// way to the log. A record stuck longer is stuck on something else (a
// filesystem frozen by someone else, a full disk): the freeze goes on, and
// that record waits as it would have anyway.
const holdDrainWait = time.Second

// logHold keeps the agent's log records in memory while the agent freezes
// filesystems: the log may be on one of them (the admin listed it in
// --freeze-own-fs, or pointed stderr at it), and a write there would wait
// for the thaw — holding the log handler's lock, so that the freeze path's
// own next record would wait too, and the timer's thaw would be all that
// ends the freeze. Held records are written, in order, when the last hold
// is released (after the thaw); those past maxHeldRecords are counted and
// the count is logged then.
type logHold struct {
	mu       sync.Mutex
	holds    int           // holds in force; one more while release writes
	held     []heldRecord  // records to write after the thaw
	dropped  int           // records past maxHeldRecords
	inflight int           // records being written to the log now
	drained  chan struct{} // closed when inflight drops to 0 (nil: nobody waits)
	max      int           // maxHeldRecords, smaller in tests
	notice   slog.Handler  // where the count of dropped records goes
	now      func() time.Time
}

// heldRecord is one record and the handler (with its attributes and
// groups) that would have written it.
type heldRecord struct {
	h   slog.Handler
	ctx context.Context
	r   slog.Record
}

// newLogHold wraps inner; the handler it returns is the agent's.
func newLogHold(inner slog.Handler) (*logHold, slog.Handler) {
	h := &logHold{max: maxHeldRecords, notice: inner, now: time.Now}
	return h, &holdHandler{inner: inner, hold: h}
}

// hold makes the log records from now on wait in memory until release,
// and waits (up to holdDrainWait) for the records already being written:
// after it returns nothing of the agent's is writing to the log. Holds
// nest (two machines' freezes may overlap); each hold needs its release.
func (h *logHold) hold() {
	if h == nil { // an Agent made without New (tests)
		return
	}
	h.mu.Lock()
	h.holds++
	if h.inflight == 0 {
		h.mu.Unlock()
		return
	}
	if h.drained == nil {
		h.drained = make(chan struct{})
	}
	ch := h.drained
	h.mu.Unlock()
	t := time.NewTimer(holdDrainWait)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
}

// release ends a hold; the last one writes the held records, in order,
// then counts the dropped ones in the log. Records logged meanwhile are
// held too and written after those before them; the hold ends when none
// is left. A hold taken meanwhile (another freeze) takes the writing
// over when it ends: hold waits for the batch being written, as for any
// record in flight. Call it after the thaw: it writes.
func (h *logHold) release() {
	if h == nil {
		return
	}
	h.mu.Lock()
	for {
		if h.holds > 1 {
			h.holds--
			h.mu.Unlock()
			return
		}
		batch, dropped := h.held, h.dropped
		h.held, h.dropped = nil, 0
		if len(batch) == 0 && dropped == 0 {
			h.holds--
			h.mu.Unlock()
			return
		}
		h.inflight++
		h.mu.Unlock()
		for _, rec := range batch {
			rec.h.Handle(rec.ctx, rec.r) // as the unheld path: a log write's error goes nowhere
		}
		if dropped > 0 {
			r := slog.NewRecord(h.now(), slog.LevelWarn, "log records were dropped while a filesystem was frozen (more than the agent holds in memory)", 0)
			r.AddAttrs(slog.Int("dropped", dropped), slog.Int("held_max", h.max))
			h.notice.Handle(context.Background(), r)
		}
		h.mu.Lock()
		h.done()
	}
}

// done ends one write in flight; h.mu is held.
func (h *logHold) done() {
	h.inflight--
	if h.inflight == 0 && h.drained != nil {
		close(h.drained)
		h.drained = nil
	}
}

// holdHandler is the agent's slog handler: inner's, held by hold.
type holdHandler struct {
	inner slog.Handler
	hold  *logHold
}

var _ slog.Handler = (*holdHandler)(nil)

func (h *holdHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *holdHandler) Handle(ctx context.Context, r slog.Record) error {
	lh := h.hold
	lh.mu.Lock()
	if lh.holds > 0 {
		if len(lh.held) < lh.max {
			// The record outlives this call: slog.Handler says to clone it.
			lh.held = append(lh.held, heldRecord{h: h.inner, ctx: context.WithoutCancel(ctx), r: r.Clone()})
		} else {
			lh.dropped++
		}
		lh.mu.Unlock()
		return nil
	}
	lh.inflight++
	lh.mu.Unlock()
	err := h.inner.Handle(ctx, r)
	lh.mu.Lock()
	lh.done()
	lh.mu.Unlock()
	return err
}

func (h *holdHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &holdHandler{inner: h.inner.WithAttrs(attrs), hold: h.hold}
}

func (h *holdHandler) WithGroup(name string) slog.Handler {
	return &holdHandler{inner: h.inner.WithGroup(name), hold: h.hold}
}
