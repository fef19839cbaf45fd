package controller

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/protocol/msg"
)

// TestRecordReportKeepsLiveProgress: reports of a cycle build the
// machine's progress (start in the controller's clock, an ETA at the
// recent rate while it runs); a late report never moves bytes back within
// a cycle, a new cycle starts again from zero, a failure keeps the bytes
// with phase error, and an agent that reports no progress shows none.
func TestRecordReportKeepsLiveProgress(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	s := &Server{repl: map[string]api.Replication{}, progress: map[string]api.ReplicationProgress{},
		now: func() time.Time { return now }}
	offset := 3 * time.Second // the agent's clock is 3 s behind
	agentStart := now.Add(-10 * time.Second).Add(-offset)
	report := func(phase string, done, total, rate int64, started time.Time) {
		s.recordReport(msg.ReportRequest{Machine: "m", Phase: phase, BytesDone: done, BytesTotal: total,
			RateBPS: rate, Started: started.UnixNano()}, offset)
	}

	report("shipping", 40<<20, 100<<20, 10<<20, agentStart)
	_, p := s.replication("m")
	require.NotNil(t, p)
	require.True(t, now.Add(-10*time.Second).Equal(p.Started), "the agent's clock offset is applied: %s", p.Started)
	require.Equal(t, int64(40<<20), p.BytesDone)
	require.NotNil(t, p.ETASeconds)
	require.InDelta(t, 6, *p.ETASeconds, 1e-9, "60 MiB left at 10 MiB/s")

	report("shipping", 30<<20, 100<<20, 10<<20, agentStart) // overtaken by the one before
	_, p = s.replication("m")
	require.Equal(t, int64(40<<20), p.BytesDone, "bytes done never move back within a cycle")

	report("idle", 100<<20, 100<<20, 8<<20, agentStart)
	_, p = s.replication("m")
	require.Equal(t, api.PhaseIdle, p.Phase)
	require.Equal(t, p.BytesTotal, p.BytesDone)
	require.Nil(t, p.ETASeconds, "no time left once the cycle ended")

	next := agentStart.Add(time.Minute)
	report("shipping", 0, 5<<20, 0, next)
	_, p = s.replication("m")
	require.Zero(t, p.BytesDone, "a new cycle starts from zero")
	require.Nil(t, p.ETASeconds, "no rate yet, no ETA")
	report("shipping", 2<<20, 5<<20, 1<<20, next)
	s.recordReport(msg.ReportRequest{Machine: "m", Phase: "error", Error: "boom"}, offset)
	r, p := s.replication("m")
	require.Equal(t, "boom", r.LastError)
	require.Equal(t, api.PhaseError, p.Phase)
	require.Equal(t, int64(2<<20), p.BytesDone, "a failed cycle keeps what it got to")
	require.Zero(t, p.RateBPS)

	s.recordReport(msg.ReportRequest{Machine: "old", Phase: "idle", BytesSent: 7}, 0)
	r, p = s.replication("old")
	require.Nil(t, p, "an agent without progress reports shows none")
	require.Equal(t, int64(7), r.BytesSent)
}

// TestCommittedPointEndsTheCycleProgress: a committed point turns a running
// cycle's progress idle with every byte done and an average rate, before
// the agent's last report arrives; a late report of the same cycle running
// does not bring it back, the agent's final report replaces it, and a new
// cycle runs again.
func TestCommittedPointEndsTheCycleProgress(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	s := &Server{repl: map[string]api.Replication{}, progress: map[string]api.ReplicationProgress{},
		now: func() time.Time { return now }}
	started := now
	report := func(phase string, done, total, rate int64, at time.Time) {
		s.recordReport(msg.ReportRequest{Machine: "m", Phase: phase, BytesDone: done, BytesTotal: total,
			RateBPS: rate, Started: at.UnixNano()}, 0)
	}
	report("shipping", 60<<20, 100<<20, 10<<20, started)
	now = now.Add(10 * time.Second)
	s.cycleCommitted("m")
	r, p := s.replication("m")
	require.Equal(t, api.PhaseIdle, p.Phase)
	require.Equal(t, api.PhaseIdle, r.Phase)
	require.Equal(t, int64(100<<20), p.BytesDone)
	require.Equal(t, int64(10<<20), p.RateBPS, "100 MiB in 10 s")
	require.Nil(t, p.ETASeconds)

	report("shipping", 90<<20, 100<<20, 10<<20, started) // overtaken by the commit
	_, p = s.replication("m")
	require.Equal(t, api.PhaseIdle, p.Phase, "a late report of a committed cycle is stale")

	report("idle", 100<<20, 100<<20, 9<<20, started)
	_, p = s.replication("m")
	require.Equal(t, int64(9<<20), p.RateBPS, "the agent's final figures replace the controller's")

	report("shipping", 1<<20, 50<<20, 0, started.Add(time.Minute))
	_, p = s.replication("m")
	require.Equal(t, api.PhaseShipping, p.Phase, "the next cycle runs")

	s.cycleCommitted("none") // a machine without progress: nothing to end
	_, p = s.replication("none")
	require.Nil(t, p)
}
