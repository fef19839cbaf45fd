package controller

import (
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/protocol/msg"
)

// recordReport keeps what a machine's agent reported (machine.report) in
// memory: the replication phase and error, and the live progress of its
// cycle. offset turns the agent's clock into the controller's.
func (s *Server) recordReport(req msg.ReportRequest, offset time.Duration) {
	now := s.now()
	s.replMu.Lock()
	defer s.replMu.Unlock()
	r := s.repl[req.Machine]
	r.Phase, r.LastError, r.Progress = req.Phase, req.Error, req.Progress
	r.BytesSent, r.BlocksSent = req.BytesSent, req.BlocksSent
	r.LastCycle = now
	s.repl[req.Machine] = r

	p, had := s.progress[req.Machine]
	switch {
	case req.BytesTotal > 0 || req.Phase == api.PhaseShipping || req.Phase == api.PhaseResync:
		started := now
		if req.Started != 0 {
			started = time.Unix(0, req.Started).Add(offset)
		}
		done := req.BytesDone
		if had && p.Started.Equal(started) && p.Phase == api.PhaseIdle && req.Phase != api.PhaseIdle {
			return // the cycle's point is committed: a late report of it running is stale
		}
		if had && p.Started.Equal(started) && p.BytesDone > done {
			// The same cycle: a report overtaken by an earlier one (a
			// retried call) never moves the bytes back.
			done = p.BytesDone
		}
		p = api.ReplicationProgress{Phase: req.Phase, BytesDone: done, BytesTotal: req.BytesTotal,
			RateBPS: req.RateBPS, Started: started}
	case !had:
		return // an agent that reports no progress (an earlier version)
	default:
		// The cycle failed (error) or ended without totals: its bytes stay
		// as they were, its rate is gone.
		p.Phase, p.RateBPS = req.Phase, 0
	}
	p.Updated = now
	s.progress[req.Machine] = p
}

// replication is what the agent last reported of a machine, with the
// progress's time left at its recent rate.
func (s *Server) replication(machine string) (api.Replication, *api.ReplicationProgress) {
	s.replMu.Lock()
	defer s.replMu.Unlock()
	r := s.repl[machine]
	p, ok := s.progress[machine]
	if !ok {
		return r, nil
	}
	if p.Active() && p.RateBPS > 0 && p.BytesTotal >= p.BytesDone {
		eta := float64(p.BytesTotal-p.BytesDone) / float64(p.RateBPS)
		p.ETASeconds = &eta
	}
	return r, &p
}

// cycleCommitted ends a machine's running progress when its point is
// committed: the point is what the cycle was for, so from then on the
// progress is idle with every byte done and the cycle's average rate. The
// agent's own last report follows (it is sent after the commit is
// acknowledged) and replaces this with the agent's figures; until it
// arrives nobody sees a point next to a cycle still shipping.
func (s *Server) cycleCommitted(machine string) {
	now := s.now()
	s.replMu.Lock()
	defer s.replMu.Unlock()
	p, ok := s.progress[machine]
	if !ok || !p.Active() {
		return
	}
	p.Phase, p.BytesDone, p.RateBPS = api.PhaseIdle, p.BytesTotal, 0
	if secs := now.Sub(p.Started).Seconds(); secs > 0 {
		p.RateBPS = int64(float64(p.BytesTotal) / secs)
	}
	p.Updated = now
	s.progress[machine] = p
	r := s.repl[machine]
	r.Phase = api.PhaseIdle
	s.repl[machine] = r
}
