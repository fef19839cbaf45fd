package controller

import (
	"context"

	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
)

// agentLinks gives the failover engine its view of the live sessions.
type agentLinks struct{ r *registry }

var _ failover.Agents = agentLinks{}

func (a agentLinks) Call(ctx context.Context, agentID, method string, req, resp any) error {
	c, ok := a.r.get(agentID)
	if !ok {
		return protocol.Errorf(protocol.CodeUnavailable, "agent %s is not connected", agentID)
	}
	if ship, ok := req.(msg.TargetShipRequest); ok && method == msg.MethodTargetShip {
		// The point this asks for may carry a name Ferry reserves: the
		// agent may use it for this machine until the call returns.
		defer a.r.grants.add(shipGrant{agentID, ship.Ref.Machine, ship.Name})()
	}
	return rpc.Call(ctx, c.sess, method, req, resp)
}

func (a agentLinks) Open(ctx context.Context, agentID string, kind protocol.StreamKind) (*session.Stream, error) {
	c, ok := a.r.get(agentID)
	if !ok {
		return nil, protocol.Errorf(protocol.CodeUnavailable, "agent %s is not connected", agentID)
	}
	return c.sess.Open(ctx, kind)
}

func (a agentLinks) Connected(agentID string) bool {
	_, ok := a.r.get(agentID)
	return ok
}

// openFailover builds the failover engine, the job engine and the stager.
func (s *Server) openFailover() {
	s.fo = &failover.Engine{
		Cat: s.cat, Repo: s.repo, Agents: agentLinks{s.agents},
		Push: s.pushConfig, Log: s.log.With("component", "failover"), Now: s.now,
		Failpoint: s.cfg.Hooks.Failpoint, Started: s.now(),
	}
	s.jobs = jobs.New(s.cat, s.fo.Kinds(), s.log.With("component", "jobs"), s.now)
	s.jobs.SetHooks(s.cfg.Hooks)
	s.jobs.OnEnd(s.jobEnded)
	s.stager = failover.NewStager(s.fo, func(ctx context.Context, machine string) bool {
		id, err := s.cat.MachineJob(ctx, machine)
		return err != nil || id != ""
	})
}
