package controller

import (
	"context"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/controller/lifecycle"
)

// Revert undoes an uncommitted failover: the machine stops at its recovery
// site, its writes there are kept as a named point, and it starts at home
// and replicates from there again.
func (s *Server) Revert(ctx context.Context, req api.MachineActionRequest) (api.Job, error) {
	if req.Plan != "" {
		return s.startPlanJob(ctx, req.Plan, failover.KindRevert, failover.Spec{}, nil, 0)
	}
	if req.Machine == "" {
		return api.Job{}, api.Errorf(api.CodeInvalid, "name a machine")
	}
	if err := s.requireState(ctx, req.Machine, lifecycle.Revert); err != nil {
		return api.Job{}, err
	}
	return s.startJob(ctx, failover.KindRevert, []string{req.Machine}, failover.Spec{Machines: []string{req.Machine}}, nil, 0)
}
