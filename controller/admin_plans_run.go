package controller

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/controller/lifecycle"
	"github.com/ferrydr/ferry/controller/points"
)

// planVerb is how one job-starting verb runs over a recovery plan: the
// lifecycle action it carries out on each member (members whose state the
// table refuses are skipped), and the job kind a moving member needs. A
// verb whose kind depends on the member's state (cleanup of a failback
// test, reprotect after a failback) picks it per member; a plan job has
// one kind, so members needing different kinds are refused together.
type planVerb struct {
	action lifecycle.Action
	kind   func(m catalog.Machine) string
}

func fixedKind(kind string) func(catalog.Machine) string {
	return func(catalog.Machine) string { return kind }
}

// planVerbs: adding a verb to plans is one row here and a call of
// startPlanJob in its admin handler.
var planVerbs = map[string]planVerb{
	failover.KindFailover: {lifecycle.Failover, fixedKind(failover.KindFailover)},
	failover.KindTest:     {lifecycle.TestFailover, fixedKind(failover.KindTest)},
	failover.KindPlanned:  {lifecycle.PlannedFailover, fixedKind(failover.KindPlanned)},
	failover.KindCommit:   {lifecycle.Commit, fixedKind(failover.KindCommit)},
	failover.KindCleanup: {lifecycle.Cleanup, func(m catalog.Machine) string {
		if m.State == catalog.StateTestFailedBack {
			return failover.KindCleanupTestFailback
		}
		return failover.KindCleanup
	}},
	failover.KindChangePoint: {lifecycle.ChangePoint, func(m catalog.Machine) string {
		if m.State == catalog.StateFailedBack {
			return failover.KindChangePointHome
		}
		return failover.KindChangePoint
	}},
	failover.KindReprotect: {lifecycle.Reprotect, func(m catalog.Machine) string {
		if m.State == catalog.StateBackHome {
			return failover.KindReprotectForward
		}
		return failover.KindReprotect
	}},
	failover.KindFailback:          {lifecycle.Failback, fixedKind(failover.KindFailback)},
	failover.KindFailbackUnplanned: {lifecycle.UnplannedFailback, fixedKind(failover.KindFailbackUnplanned)},
	failover.KindRevert:            {lifecycle.Revert, fixedKind(failover.KindRevert)},
}

// planMembers resolves a plan for a verb: the members that move, group by
// group, and those skipped with why — already on the chosen side or in a
// state the lifecycle table refuses for the action, busy with another
// job, or no longer protected. A plan with no member to move is refused
// with every member's reason.
func (s *Server) planMembers(ctx context.Context, planName, verb string) (*failover.PlanRun, []string, string, error) {
	v, ok := planVerbs[verb]
	if !ok {
		return nil, nil, "", api.Errorf(api.CodeInvalid, "%s does not run over recovery plans", verb)
	}
	p, err := s.cat.Plan(ctx, planName)
	if err != nil {
		return nil, nil, "", apiErr(err)
	}
	run := &failover.PlanRun{Name: p.Name, Skipped: map[string]string{}}
	var all, moving []string
	kinds := map[string][]string{}
	for _, g := range p.Groups {
		pg := api.PlanGroup{Number: g.Number, Pre: g.Pre, Post: g.Post}
		for _, name := range g.Machines {
			all = append(all, name)
			why, kind, err := s.planMember(ctx, name, v)
			if err != nil {
				return nil, nil, "", err
			}
			if why != "" {
				run.Skipped[name] = why
				continue
			}
			pg.Machines = append(pg.Machines, name)
			if ips := g.IPsOf(name); len(ips) > 0 {
				if pg.IPs == nil {
					pg.IPs = map[string][]api.NICAddress{}
				}
				pg.IPs[name] = ips
			}
			moving = append(moving, name)
			kinds[kind] = append(kinds[kind], name)
		}
		run.Groups = append(run.Groups, pg)
	}
	if len(moving) == 0 {
		var reasons []string
		for _, name := range all {
			reasons = append(reasons, name+": "+run.Skipped[name])
		}
		return nil, nil, "", api.Errorf(api.CodeFailedPrecondition, "plan %s: no member can %s: %s", p.Name, v.action, strings.Join(reasons, "; "))
	}
	if len(kinds) > 1 {
		var parts []string
		for k, ms := range kinds {
			parts = append(parts, fmt.Sprintf("%s needs a %s job", strings.Join(ms, ", "), k))
		}
		return nil, nil, "", api.Errorf(api.CodeFailedPrecondition, "plan %s: its members need different jobs (%s): run them machine by machine", p.Name, strings.Join(parts, "; "))
	}
	var kind string
	for k := range kinds {
		kind = k
	}
	return run, all, kind, nil
}

// planMember says why a member is skipped ("" when it moves) and the kind
// it needs.
func (s *Server) planMember(ctx context.Context, name string, v planVerb) (string, string, error) {
	m, err := s.machine(ctx, name)
	if errors.Is(err, catalog.ErrNotFound) {
		return "not protected", "", nil
	}
	if err != nil {
		return "", "", err
	}
	if job, err := s.cat.MachineJob(ctx, name); err != nil {
		return "", "", err
	} else if job != "" {
		return fmt.Sprintf("busy with job %s", job), "", nil
	}
	if err := lifecycle.Check(name, m.State, v.action); err != nil {
		var r *lifecycle.Refusal
		if errors.As(err, &r) {
			return fmt.Sprintf("%s: %s", r.State, r.Reason), "", nil
		}
		return err.Error(), "", nil
	}
	return "", v.kind(m), nil
}

// startPlanJob starts a job of a verb over a plan: its members, skipped
// ones included, are listed in the job; only the moving ones are locked.
func (s *Server) startPlanJob(ctx context.Context, planName, verb string, spec failover.Spec, key []byte, timeout api.Duration) (api.Job, error) {
	run, all, kind, err := s.planMembers(ctx, planName, verb)
	if err != nil {
		return api.Job{}, err
	}
	spec.Plan = run
	spec.Machines = nil
	for _, g := range run.Groups {
		spec.Machines = append(spec.Machines, g.Machines...)
	}
	if len(key) > 0 {
		if _, err := s.reader(key); err != nil {
			return api.Job{}, err
		}
	}
	j, err := s.jobs.StartWith(ctx, kind, all, spec, timeout.Std(), func(id string) error {
		return s.fo.SetKey(id, key)
	})
	return j, apiErr(err)
}

// planFailoverVerb is the verb of a failover request.
func planFailoverVerb(req api.FailoverRequest) string {
	switch {
	case req.Test:
		return failover.KindTest
	case req.Planned:
		return failover.KindPlanned
	}
	return failover.KindFailover
}

// checkPlanPoint refuses a point spec that names one machine's point: a
// plan's members share times and latest* specs, never point ids.
func checkPlanPoint(spec string) error {
	if _, err := strconv.ParseInt(spec, 10, 64); err == nil {
		return api.Errorf(api.CodeInvalid, "--point %s is one machine's point id: with --plan give an RFC 3339 time or latest, latest-processed, latest-app-consistent", spec)
	}
	return nil
}

// planDryRun answers `ferry failover --plan P --dry-run`: each member, in
// group order, with the point its failover would use (the single-machine
// dry run's checks), the target, the free space there against what the
// move needs, or why it is skipped; and the plan's actions. Nothing is
// recorded and nothing changes.
func (s *Server) planDryRun(ctx context.Context, req api.FailoverRequest, key []byte) (api.Job, error) {
	verb := planFailoverVerb(req)
	run, _, kind, err := s.planMembers(ctx, req.Plan, verb)
	if err != nil {
		return api.Job{}, err
	}
	if len(key) > 0 {
		if _, err := s.reader(key); err != nil {
			return api.Job{}, err
		}
	}
	p, err := s.cat.Plan(ctx, req.Plan)
	if err != nil {
		return api.Job{}, apiErr(err)
	}
	out := api.Job{Kind: kind, State: api.JobDryRun, Plan: p.Name}
	for _, g := range p.Groups {
		for i, a := range g.Pre {
			out.Actions = append(out.Actions, api.JobAction{Group: g.Number, Phase: "pre", Index: i, Script: a.Script, On: a.On, Manual: a.Manual, State: api.StepPending})
		}
		for i, a := range g.Post {
			out.Actions = append(out.Actions, api.JobAction{Group: g.Number, Phase: "post", Index: i, Script: a.Script, On: a.On, Manual: a.Manual, State: api.StepPending})
		}
		for _, name := range g.Machines {
			c := api.MachineCheck{Machine: name, Group: g.Number, Skipped: run.Skipped[name], IPs: g.IPsOf(name)}
			if c.Skipped == "" {
				s.checkPlanMember(ctx, kind, req, key, &c)
			}
			out.Checks = append(out.Checks, c)
		}
	}
	return out, nil
}

// checkPlanMember runs one member's single-machine dry run and measures
// its target.
func (s *Server) checkPlanMember(ctx context.Context, kind string, req api.FailoverRequest, key []byte, c *api.MachineCheck) {
	r := req
	r.Plan, r.Machine, r.Key = "", c.Machine, nil
	spec := failover.Spec{Machines: []string{c.Machine}, Req: r}
	j, err := s.jobs.DryRun(ctx, kind, spec.Machines, spec, func(id string) error { return s.fo.SetKey(id, key) }, s.fo.DropKey)
	if err != nil {
		c.Error = err.Error()
		return
	}
	c.PointID = j.Machines[0].PointID
	// latest takes a fresh cycle when the source is reachable; a planned
	// failover's final cycle makes its point.
	c.Fresh = req.Planned || req.Point == "" || req.Point == "latest"
	if err := s.fo.CheckMove(ctx, c, req.Target, req.Test); err != nil {
		c.Error = err.Error()
	}
}

// planFailback brings a plan's members active at the recovery site home
// (planned, or unplanned with --unplanned or --point); members at home are
// skipped. Each moving member passes the single-machine checks first.
func (s *Server) planFailback(ctx context.Context, req api.MachineActionRequest) (api.Job, error) {
	if req.Test {
		return api.Job{}, api.Errorf(api.CodeInvalid, "failback --test of a plan is not built yet: test members one by one (ferry failback M --test)")
	}
	if err := points.CheckSpec(req.Point); err != nil {
		return api.Job{}, apiErr(err)
	}
	if err := checkPlanPoint(req.Point); err != nil {
		return api.Job{}, err
	}
	verb, action := failover.KindFailback, lifecycle.Failback
	if req.Unplanned || req.Point != "" {
		verb, action = failover.KindFailbackUnplanned, lifecycle.UnplannedFailback
	}
	run, _, _, err := s.planMembers(ctx, req.Plan, verb)
	if err != nil {
		return api.Job{}, err
	}
	for _, g := range run.Groups {
		for _, m := range g.Machines {
			one := req
			one.Plan, one.Machine = "", m
			if err := s.refuseUnplannedReplica(ctx, one, action); err != nil {
				return api.Job{}, err
			}
			if err := s.requireRecoverySite(ctx, one); err != nil {
				return api.Job{}, err
			}
		}
	}
	return s.startPlanJob(ctx, req.Plan, verb, failover.Spec{Action: req}, nil, 0)
}
