package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"github.com/ferrydr/ferry/internal/workload"
)

// churn writes workload.Content pieces of 4 KiB at seeded random 4 KiB-aligned
// offsets of the file at path, paced to rate bytes per second, for d (or
// until ctx ends). The writes are buffered, as a guest's are with a
// write-back cache; a reflink clone flushes them. It returns the bytes
// written; stall, when not nil, is set to the longest single write (what a
// freeze of the file's filesystem cost the writer).
func churn(ctx context.Context, path string, size int64, seed uint64, rate int64, d time.Duration, stall *time.Duration) (int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	rng := rand.New(rand.NewPCG(seed, 0x636875726e))
	buf := make([]byte, workload.WriteSize)
	slots := size / workload.WriteSize
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	seq := 0
	for {
		elapsed := time.Since(start)
		if elapsed >= d {
			break
		}
		due := int(elapsed.Seconds() * float64(rate) / workload.WriteSize)
		for ; seq < due; seq++ {
			workload.Content(buf, seed, seq)
			t0 := time.Now()
			_, err := f.WriteAt(buf, rng.Int64N(slots)*workload.WriteSize)
			if took := time.Since(t0); stall != nil && took > *stall {
				*stall = took
			}
			if err != nil {
				f.Close()
				return int64(seq) * workload.WriteSize, fmt.Errorf("churn write: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			f.Close()
			return int64(seq) * workload.WriteSize, ctx.Err()
		case <-tick.C:
		}
	}
	return int64(seq) * workload.WriteSize, f.Close()
}
