package agent

import (
	"context"
	"iter"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrydr/ferry/agent/ship"
	"github.com/ferrydr/ferry/protocol/msg"
)

// reportEvery is how often a running cycle tells the controller how far it
// got: often enough for a live progress bar, rare enough that a machine.report
// call (a stream round trip) costs nothing next to the data it describes.
const reportEvery = time.Second

// rateWeight is the weight of the newest interval in the reported rate (an
// exponential moving average): steady enough for an ETA, quick to follow a
// bandwidth change.
const rateWeight = 0.3

// reporter sends what replication is doing (machine.report, best effort).
type reporter func(ctx context.Context, r msg.ReportRequest)

// cycleProgress counts the bytes of a cycle's candidate blocks as they are
// compared. The total is known before shipping starts (the candidates are
// counted first), so bytes done rise monotonically to it.
type cycleProgress struct {
	phase   string
	total   int64
	started time.Time
	done    atomic.Int64
}

// blockBytes is the size of block b of a disk of the given size: the last
// block may be short. Progress counts candidates by it on both sides (the
// total and the bytes done), so the two meet exactly.
func blockBytes(b int64, bs int, size int64) int64 {
	return max(0, min(int64(bs), size-b*int64(bs)))
}

// candidateBytes counts the bytes of a disk's candidates. The candidate
// sequences are plain functions of slices and the block map, so walking
// one twice (here and when shipping) yields the same blocks; counting
// costs one pass without reading any disk.
func candidateBytes(cands iter.Seq[ship.Candidate], bs int, size int64) int64 {
	var n int64
	for c := range cands {
		n += blockBytes(c.Block, bs, size)
	}
	return n
}

// watch reports the progress every reportEvery until the returned stop is
// called (stop waits for a report in flight, so the caller's final report
// comes last).
func (p *cycleProgress) watch(ctx context.Context, report reporter, now func() time.Time) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(reportEvery)
		defer t.Stop()
		prevDone, prevAt := int64(0), p.started
		rate := -1.0
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			at, done := now(), min(p.done.Load(), p.total)
			if dt := at.Sub(prevAt).Seconds(); dt > 0 {
				inst := float64(done-prevDone) / dt
				if rate < 0 {
					rate = inst
				} else {
					rate = rateWeight*inst + (1-rateWeight)*rate
				}
			}
			prevDone, prevAt = done, at
			report(ctx, p.request(done, int64(max(rate, 0))))
		}
	}()
	return func() { cancel(); wg.Wait() }
}

// request is the report of the progress so far.
func (p *cycleProgress) request(done, rate int64) msg.ReportRequest {
	r := msg.ReportRequest{Phase: p.phase, BytesDone: done, BytesTotal: p.total, RateBPS: rate,
		Started: p.started.UnixNano()}
	if p.total > 0 {
		r.Progress = float64(done) / float64(p.total)
	}
	return r
}
