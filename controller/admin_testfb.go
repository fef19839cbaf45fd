package controller

import (
	"context"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/controller/lifecycle"
)

// testFailback starts a failback test (ferry failback M --test): a clone
// of the home disks started at home; nothing stops.
func (s *Server) testFailback(ctx context.Context, req api.MachineActionRequest) (api.Job, error) {
	if req.Unplanned || req.Point != "" || req.StopSource {
		return api.Job{}, api.Errorf(api.CodeInvalid, "--test stops nothing and moves nothing home: give it without --point, --unplanned or --stop-source")
	}
	if err := s.requireState(ctx, req.Machine, lifecycle.TestFailback); err != nil {
		return api.Job{}, err
	}
	m, err := s.cat.Machine(ctx, req.Machine)
	if err != nil {
		return api.Job{}, apiErr(err)
	}
	if m.RoundTrip == nil || m.RoundTrip.TestDir == "" {
		return api.Job{}, api.Errorf(api.CodeFailedPrecondition, "machine %s: a failback test starts a clone of the home disks in the test directory given at re-protect, and its re-protect gave none (ferry reprotect %s --test-dir DIR)", req.Machine, req.Machine)
	}
	if m.Spec.Driver.Start == "" && (m.Spec.SourceDriver == "" || m.Spec.SourceDriver == api.DriverExec) {
		return api.Job{}, api.Errorf(api.CodeFailedPrecondition, "machine %s has no start command at home (protect with --start): a failback test starts its clone through the home driver", req.Machine)
	}
	return s.startJob(ctx, failover.KindTestFailback, []string{req.Machine}, failover.Spec{Machines: []string{req.Machine}, Action: req}, nil, 0)
}

// refuseUnplannedReplica refuses an unplanned failback of a machine that
// replicates home into a new target (reprotect --target): not built yet.
func (s *Server) refuseUnplannedReplica(ctx context.Context, req api.MachineActionRequest, action lifecycle.Action) error {
	if action != lifecycle.UnplannedFailback {
		return nil
	}
	m, err := s.cat.Machine(ctx, req.Machine)
	if err != nil || m.RoundTrip == nil || m.RoundTrip.Replica == "" {
		return nil
	}
	return api.Errorf(api.CodeFailedPrecondition, "machine %s replicates home into target %s (reprotect --target): an unplanned failback from it is not built yet; fail back planned (ferry failback %s), which loses nothing", req.Machine, m.RoundTrip.Replica, req.Machine)
}
