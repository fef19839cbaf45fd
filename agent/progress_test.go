package agent

import (
	"context"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/ship"
	"github.com/ferrydr/ferry/protocol/msg"
)

// TestProgressReportsEverySecond: a running cycle reports once a second
// the bytes done so far (never past the total), the rate and its start;
// stop ends the reports.
func TestProgressReportsEverySecond(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const mib = 1 << 20
		start := time.Now()
		p := &cycleProgress{phase: "shipping", total: 9 * mib, started: start}
		var mu sync.Mutex
		var got []msg.ReportRequest
		stop := p.watch(context.Background(), func(_ context.Context, r msg.ReportRequest) {
			mu.Lock()
			got = append(got, r)
			mu.Unlock()
		}, time.Now)
		time.Sleep(500 * time.Millisecond)
		for range 5 {
			p.done.Add(2 * mib) // 2 MiB a second; the fifth goes past the total
			time.Sleep(time.Second)
		}
		stop()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, got, 5, "one report a second, none after stop")
		var done []int64
		for _, r := range got {
			require.Equal(t, "shipping", r.Phase)
			require.Equal(t, int64(9*mib), r.BytesTotal)
			require.Equal(t, start.UnixNano(), r.Started)
			done = append(done, r.BytesDone)
		}
		require.Equal(t, []int64{2 * mib, 4 * mib, 6 * mib, 8 * mib, 9 * mib}, done, "monotonic, capped at the total")
		require.Equal(t, int64(2*mib), got[3].RateBPS, "a steady 2 MiB/s")
		require.InDelta(t, 1.0, got[4].Progress, 1e-9)
	})
}

// TestCandidateBytes: the total counts every candidate's block, the last
// one at its real length, the same way ship counts them as it goes.
func TestCandidateBytes(t *testing.T) {
	const bs = 64 << 10
	size := int64(10*bs - 1000)
	cands := slices.Values([]ship.Candidate{{Block: 0}, {Block: 3, Hole: true}, {Block: 9}})
	require.Equal(t, int64(bs+bs+bs-1000), candidateBytes(cands, bs, size))
	require.Equal(t, int64(0), blockBytes(10, bs, size), "past the end: nothing")
}
