package scrub

import (
	"context"
	"time"
)

// pacer holds a pass's average read rate at or under rate bytes/s: before
// n more bytes are read it sleeps until the bytes read so far, these
// included, are due at that rate since the pass began. A slow disk only
// lowers the rate; it never earns a burst above it.
type pacer struct {
	rate  int64
	start time.Time
	done  int64
}

func newPacer(rate int64) *pacer { return &pacer{rate: rate, start: time.Now()} }

func (p *pacer) wait(ctx context.Context, n int64) error {
	p.done += n
	if p.rate <= 0 {
		return ctx.Err()
	}
	due := p.start.Add(time.Duration(float64(p.done) / float64(p.rate) * float64(time.Second)))
	d := time.Until(due)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
