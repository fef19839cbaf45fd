package controller

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/controller/lifecycle"
	"github.com/ferrydr/ferry/controller/points"
)

// AddTarget binds a recovery-site agent, a directory and a driver.
func (s *Server) AddTarget(ctx context.Context, t api.Target) (api.Target, error) {
	if err := validName("target", t.Name); err != nil {
		return t, err
	}
	a, err := s.cat.Agent(ctx, t.Agent)
	if err != nil {
		return t, apiErr(err)
	}
	if !filepath.IsAbs(t.Dir) {
		return t, api.Errorf(api.CodeInvalid, "--dir %q must be an absolute path on the target agent's host", t.Dir)
	}
	if t.Driver == "" {
		t.Driver = "exec"
	}
	if t.Format == "" {
		t.Format = "raw"
	}
	switch t.Format {
	case "raw", "qcow2", "vhdx", "vmdk":
	default:
		return t, api.Errorf(api.CodeInvalid, "target format %q: want raw, qcow2, vhdx or vmdk", t.Format)
	}
	if err := checkTargetDriver(&t); err != nil {
		return t, err
	}
	t.Agent = a.Name
	if t.Driver == api.DriverExec && t.Exec != (api.Driver{}) {
		if err := s.refusedByAgent(a.ID, a.Name, allowExecDrivers); err != nil {
			return t, err
		}
	}
	if err := s.validateTargetDriver(ctx, a.ID, t); err != nil {
		return t, err
	}
	if err := s.cat.AddTarget(ctx, a.ID, t); err != nil {
		return t, apiErr(err)
	}
	s.stager.KickAll(ctx)
	return t, nil
}

// Targets lists targets.
func (s *Server) Targets(ctx context.Context) ([]api.Target, error) {
	ts, err := s.cat.Targets(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.Target{}
	for _, t := range ts {
		if a, err := s.cat.Agent(ctx, t.Agent); err == nil {
			_, t.Connected = s.agents.get(a.ID)
		}
		out = append(out, t)
	}
	return out, nil
}

// RemoveTarget deletes a target no machine uses.
func (s *Server) RemoveTarget(ctx context.Context, name string) error {
	return apiErr(s.cat.RemoveTarget(ctx, name))
}

// requireState refuses, before any job exists, what the lifecycle table
// refuses for the action in the machine's state, with the reason and what
// to do instead. A machine another job holds is busy.
func (s *Server) requireState(ctx context.Context, machine string, action lifecycle.Action) error {
	m, err := s.machine(ctx, machine)
	if err != nil {
		return apiErr(err)
	}
	refusal := lifecycle.Check(machine, m.State, action)
	if refusal == nil {
		return nil
	}
	job, err := s.cat.MachineJob(ctx, machine)
	if err != nil {
		return err
	}
	if job != "" {
		return api.Errorf(api.CodeBusy, "%v", s.cat.Busy(ctx, machine, job))
	}
	return apiErr(refusal)
}

// startJob starts a failover-family job, handing it the key if any.
func (s *Server) startJob(ctx context.Context, kind string, machines []string, spec failover.Spec, key []byte, timeout api.Duration) (api.Job, error) {
	for _, m := range machines {
		if _, err := s.cat.Machine(ctx, m); err != nil {
			return api.Job{}, apiErr(err)
		}
	}
	if len(key) > 0 {
		// Check the key before the job exists; the job gets it below.
		if _, err := s.reader(key); err != nil {
			return api.Job{}, err
		}
	}
	j, err := s.jobs.StartWith(ctx, kind, machines, spec, timeout.Std(), func(id string) error {
		return s.fo.SetKey(id, key)
	})
	return j, apiErr(err)
}

// Failover starts a failover, test failover or planned failover.
func (s *Server) Failover(ctx context.Context, req api.FailoverRequest) (api.Job, error) {
	if req.Plan != "" && req.Machine != "" {
		return api.Job{}, api.Errorf(api.CodeInvalid, "give a machine or --plan, not both")
	}
	if req.Machine == "" && req.Plan == "" {
		return api.Job{}, api.Errorf(api.CodeInvalid, "name a machine")
	}
	switch {
	case req.Test && (req.Planned || req.ShutdownSource):
		return api.Job{}, api.Errorf(api.CodeInvalid, "--test cannot be combined with --planned or --shutdown-source")
	case req.Planned && req.Point != "":
		return api.Job{}, api.Errorf(api.CodeInvalid, "--planned always uses the final point: --point cannot be given")
	}
	if fb, reverse, err := api.ReverseFailover(req); err != nil {
		return api.Job{}, api.Errorf(api.CodeInvalid, "%v", err)
	} else if reverse {
		// --direction reverse is exactly the unplanned failback.
		return s.Failback(ctx, fb)
	}
	if err := points.CheckSpec(req.Point); err != nil {
		return api.Job{}, apiErr(err)
	}
	if req.Plan != "" {
		if err := checkPlanPoint(req.Point); err != nil {
			return api.Job{}, err
		}
		key := req.Key
		req.Key = nil
		if req.DryRun {
			return s.planDryRun(ctx, req, key)
		}
		return s.startPlanJob(ctx, req.Plan, planFailoverVerb(req), failover.Spec{Req: req}, key, req.Timeout)
	}
	kind, action := failover.KindFailover, lifecycle.Failover
	switch {
	case req.Test:
		kind, action = failover.KindTest, lifecycle.TestFailover
	case req.Planned:
		kind, action = failover.KindPlanned, lifecycle.PlannedFailover
	}
	var preempted []string
	if !req.DryRun && !req.Test {
		var err error
		if preempted, err = s.preemptTests(ctx, req.Machine, action); err != nil {
			return api.Job{}, err
		}
	}
	if err := s.requireState(ctx, req.Machine, action); err != nil {
		return api.Job{}, err
	}
	key := req.Key
	req.Key = nil
	spec := failover.Spec{Machines: []string{req.Machine}, Req: req, Preempted: preempted}
	if req.DryRun {
		if len(key) > 0 {
			if _, err := s.reader(key); err != nil {
				return api.Job{}, err
			}
		}
		j, err := s.jobs.DryRun(ctx, kind, spec.Machines, spec, func(id string) error { return s.fo.SetKey(id, key) }, s.fo.DropKey)
		return j, apiErr(err)
	}
	return s.startJob(ctx, kind, []string{req.Machine}, spec, key, req.Timeout)
}

// Commit ends a failover and deletes the machine's recovery points.
func (s *Server) Commit(ctx context.Context, req api.MachineActionRequest) (api.Job, error) {
	if req.Plan != "" {
		return s.startPlanJob(ctx, req.Plan, failover.KindCommit, failover.Spec{}, nil, 0)
	}
	if err := s.requireState(ctx, req.Machine, lifecycle.Commit); err != nil {
		return api.Job{}, err
	}
	return s.startJob(ctx, failover.KindCommit, []string{req.Machine}, failover.Spec{Machines: []string{req.Machine}}, nil, 0)
}

// ChangePoint moves a failed-over machine to another point.
func (s *Server) ChangePoint(ctx context.Context, req api.MachineActionRequest) (api.Job, error) {
	if req.Point == "" {
		return api.Job{}, api.Errorf(api.CodeInvalid, "--point is required")
	}
	if err := points.CheckSpec(req.Point); err != nil {
		return api.Job{}, apiErr(err)
	}
	if req.Plan != "" {
		if err := checkPlanPoint(req.Point); err != nil {
			return api.Job{}, err
		}
		return s.startPlanJob(ctx, req.Plan, failover.KindChangePoint, failover.Spec{Point: req.Point}, req.Key, 0)
	}
	if err := s.requireState(ctx, req.Machine, lifecycle.ChangePoint); err != nil {
		return api.Job{}, err
	}
	kind := failover.KindChangePoint
	if m, err := s.cat.Machine(ctx, req.Machine); err == nil && m.State == catalog.StateFailedBack {
		kind = failover.KindChangePointHome // the home disks move
	}
	return s.startJob(ctx, kind, []string{req.Machine}, failover.Spec{Machines: []string{req.Machine}, Point: req.Point,
		Req: api.FailoverRequest{AllowDamaged: req.AllowDamaged}}, req.Key, 0)
}

// Cleanup ends a test failover.
func (s *Server) Cleanup(ctx context.Context, req api.MachineActionRequest) (api.Job, error) {
	if req.Plan != "" {
		return s.startPlanJob(ctx, req.Plan, failover.KindCleanup, failover.Spec{}, nil, 0)
	}
	if err := s.requireState(ctx, req.Machine, lifecycle.Cleanup); err != nil {
		return api.Job{}, err
	}
	kind := failover.KindCleanup
	if m, err := s.cat.Machine(ctx, req.Machine); err == nil && m.State == catalog.StateTestFailedBack {
		kind = failover.KindCleanupTestFailback
	}
	return s.startJob(ctx, kind, []string{req.Machine}, failover.Spec{Machines: []string{req.Machine}}, nil, 0)
}

// Reprotect starts replication from the machine's active site to the
// other one: home after a committed failover, to the recovery site again
// after a failback.
func (s *Server) Reprotect(ctx context.Context, req api.MachineActionRequest) (api.Job, error) {
	if req.StopSource && req.SourceIsOff {
		return api.Job{}, api.Errorf(api.CodeInvalid, "give --stop-source or --source-is-off, not both")
	}
	if req.Plan != "" {
		if req.Target != "" {
			return api.Job{}, api.Errorf(api.CodeInvalid, "--target names one machine's new replica: re-protect a plan without it")
		}
		return s.startPlanJob(ctx, req.Plan, failover.KindReprotect, failover.Spec{Action: req}, nil, 0)
	}
	if err := s.requireState(ctx, req.Machine, lifecycle.Reprotect); err != nil {
		return api.Job{}, err
	}
	m, err := s.cat.Machine(ctx, req.Machine)
	if err != nil {
		return api.Job{}, apiErr(err)
	}
	kind := failover.KindReprotect
	if m.State == catalog.StateBackHome {
		kind = failover.KindReprotectForward
	}
	return s.startJob(ctx, kind, []string{req.Machine}, failover.Spec{Machines: []string{req.Machine}, Action: req}, nil, 0)
}

// Failback brings a machine replicating home back home.
func (s *Server) Failback(ctx context.Context, req api.MachineActionRequest) (api.Job, error) {
	if req.Plan != "" {
		return s.planFailback(ctx, req)
	}
	if req.Test {
		return s.testFailback(ctx, req)
	}
	if err := points.CheckSpec(req.Point); err != nil {
		return api.Job{}, apiErr(err)
	}
	action := lifecycle.Failback
	if req.Unplanned || req.Point != "" {
		action = lifecycle.UnplannedFailback
	}
	preempted, err := s.preemptTests(ctx, req.Machine, action)
	if err != nil {
		return api.Job{}, err
	}
	if err := s.requireState(ctx, req.Machine, action); err != nil {
		return api.Job{}, err
	}
	if err := s.refuseUnplannedReplica(ctx, req, action); err != nil {
		return api.Job{}, err
	}
	if err := s.requireRecoverySite(ctx, req); err != nil {
		return api.Job{}, err
	}
	kind := failover.KindFailback
	if action == lifecycle.UnplannedFailback {
		kind = failover.KindFailbackUnplanned
	}
	return s.startJob(ctx, kind, []string{req.Machine}, failover.Spec{Machines: []string{req.Machine}, Action: req, Preempted: preempted}, nil, 0)
}

// preemptWait bounds how long a failover waits for the cleanup of a test.
const preemptWait = 10 * time.Minute

// preemptTests makes way for a failover or failback (a disaster beats a
// test): a drill running on the machine is cancelled and cleans up; a test
// the lifecycle table says to end first (its First action) is cleaned up
// by a job this call waits for. It returns what the new job notes.
func (s *Server) preemptTests(ctx context.Context, machine string, action lifecycle.Action) ([]string, error) {
	var notes []string
	drill, err := s.drills.preempt(ctx, machine, fmt.Sprintf("'%s %s' preempted the drill", action, machine))
	if err != nil {
		return nil, err
	}
	if drill != "" {
		notes = append(notes, fmt.Sprintf("drill %s was running on %s: cancelled and cleaned up before this %s (a disaster beats a drill)", drill, machine, action))
	}
	m, err := s.cat.Machine(ctx, machine)
	if err != nil {
		return notes, apiErr(err)
	}
	r := lifecycle.Lookup(m.State, action)
	if !r.Allowed() || r.First != lifecycle.Cleanup {
		return notes, nil
	}
	if job, err := s.cat.MachineJob(ctx, machine); err != nil || job != "" {
		return notes, err // busy: requireState says so
	}
	// The test runs where its cleanup must reach: at the target (a test
	// failover) or at home (a failback test).
	agentID, where := m.AgentID, "home"
	if m.Failover != nil {
		if _, id, err := s.cat.Target(ctx, m.Failover.Target); err == nil {
			agentID, where = id, "target "+m.Failover.Target
		}
	}
	if _, ok := s.agents.get(agentID); !ok {
		return notes, api.Errorf(api.CodeUnavailable, "machine %s is %s: the %s must clean the test up first, and the agent at %s is not connected", machine, m.State, action, where)
	}
	j, err := s.Cleanup(ctx, api.MachineActionRequest{Machine: machine})
	if err != nil {
		return notes, err
	}
	// The cleanup runs to its end even if the caller goes away; the
	// caller waits for it a bounded time.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), preemptWait)
	defer cancel()
	if j, err = s.followJob(wctx, j.ID); err != nil {
		return notes, api.Errorf(api.CodeBusy, "machine %s: cleaning the test up first (job %s) did not end within %s: the %s did not start; it starts once the cleanup ended (ferry jobs watch %s)", machine, j.ID, preemptWait, action, j.ID)
	}
	if j.State != api.JobSucceeded {
		return notes, api.Errorf(api.CodeFailedPrecondition, "machine %s is %s and cleaning the test up first failed (job %s %s: %s); the %s did not start",
			machine, m.State, j.ID, j.State, j.Error, action)
	}
	return append(notes, fmt.Sprintf("a test of %s was running (%s): job %s cleaned it up before this %s (a disaster beats a test)", machine, m.State, j.ID, action)), nil
}

// requireRecoverySite refuses, before any job exists, a failback whose
// recovery site's agent is not connected, unless --unplanned says to bring
// the machine home anyway (the job then owes that site a fence).
func (s *Server) requireRecoverySite(ctx context.Context, req api.MachineActionRequest) error {
	if req.Unplanned {
		return nil
	}
	m, err := s.cat.Machine(ctx, req.Machine)
	if err != nil || m.RoundTrip == nil {
		return apiErr(err) // the job's prerequisites say what is missing
	}
	t, agentID, err := s.cat.Target(ctx, m.RoundTrip.Target)
	if err != nil {
		return nil
	}
	if _, ok := s.agents.get(agentID); ok {
		return nil
	}
	return api.Errorf(api.CodeFailedPrecondition, "machine %s: the recovery site %s is unreachable (its agent %s is not connected): a failback stops the machine there first; give --unplanned to bring it home anyway from the newest point replicated home (the copy there is stopped and its writes kept as a point when the site reconnects), or wait for the site", req.Machine, t.Name, t.Agent)
}

// Jobs lists jobs.
func (s *Server) Jobs(ctx context.Context) ([]api.Job, error) { return s.jobs.List(ctx) }

// Job shows one job.
func (s *Server) Job(ctx context.Context, id string) (api.Job, error) { return s.jobs.Get(ctx, id) }

// WatchJob streams a job's snapshots until it ends.
func (s *Server) WatchJob(ctx context.Context, id string) (<-chan api.Job, error) {
	return s.jobs.Watch(ctx, id)
}

// CancelJob stops a job at a step boundary and rolls the target back.
func (s *Server) CancelJob(ctx context.Context, id string) (api.Job, error) {
	return s.jobs.Cancel(ctx, id)
}

// ResumeJob continues a job waiting on a manual action.
func (s *Server) ResumeJob(ctx context.Context, id string) (api.Job, error) {
	return s.jobs.Continue(ctx, id)
}
