package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
)

// Plans lists every plan.
func (s *Server) Plans(ctx context.Context) ([]api.Plan, error) {
	ps, err := s.cat.Plans(ctx)
	if ps == nil {
		ps = []api.Plan{}
	}
	return ps, apiErr(err)
}

// Plan reads one plan.
func (s *Server) Plan(ctx context.Context, name string) (api.Plan, error) {
	p, err := s.cat.Plan(ctx, name)
	return p, apiErr(err)
}

// CreatePlan creates a plan (usually empty: groups come with add-group).
func (s *Server) CreatePlan(ctx context.Context, p api.Plan) (api.Plan, error) {
	s.planMu.Lock()
	defer s.planMu.Unlock()
	numberGroups(&p)
	if err := s.validPlan(ctx, p); err != nil {
		return p, err
	}
	return p, apiErr(s.cat.PutPlan(ctx, p, true))
}

// DeletePlan deletes a plan; its machines stay protected.
func (s *Server) DeletePlan(ctx context.Context, name string) error {
	s.planMu.Lock()
	defer s.planMu.Unlock()
	return apiErr(s.cat.DeletePlan(ctx, name))
}

// ApplyPlan creates the plan or replaces it whole (plans as code), and
// says what changed: nothing when the plan already was as asked.
func (s *Server) ApplyPlan(ctx context.Context, p api.Plan) (api.PlanApplyResult, error) {
	s.planMu.Lock()
	defer s.planMu.Unlock()
	numberGroups(&p)
	res := api.PlanApplyResult{Plan: p, Changes: []string{}}
	if err := s.validPlan(ctx, p); err != nil {
		return res, err
	}
	old, err := s.cat.Plan(ctx, p.Name)
	switch {
	case errors.Is(err, catalog.ErrNotFound):
		res.Created = true
		res.Changes = api.Changes(nil, p)
		return res, apiErr(s.cat.PutPlan(ctx, p, true))
	case err != nil:
		return res, apiErr(err)
	}
	res.Changes = api.Changes(&old, p)
	if len(res.Changes) == 0 {
		return res, nil
	}
	return res, apiErr(s.cat.PutPlan(ctx, p, false))
}

// planEdits is what each editing verb does to a plan; validPlan then checks
// the result as a whole, so an edit only has to say what it changes.
var planEdits = map[string]func(p *api.Plan, e api.PlanEdit) error{
	api.PlanAddGroup: func(p *api.Plan, e api.PlanEdit) error {
		p.Groups = append(p.Groups, api.PlanGroup{Machines: slices.Clone(e.Machines)})
		return nil
	},
	api.PlanAddMachine: func(p *api.Plan, e api.PlanEdit) error {
		g, err := planGroup(p, e.Group)
		if err != nil {
			return err
		}
		if len(e.Machines) == 0 {
			return api.Errorf(api.CodeInvalid, "name at least one machine to add")
		}
		if len(e.IPs) > 0 {
			if len(e.Machines) != 1 {
				return api.Errorf(api.CodeInvalid, "--ip is one machine's: add the machines one at a time")
			}
			if g.IPs == nil {
				g.IPs = map[string][]api.NICAddress{}
			}
			g.IPs[e.Machines[0]] = slices.Clone(e.IPs)
		}
		g.Machines = append(g.Machines, e.Machines...)
		return nil
	},
	api.PlanRemoveMachine: func(p *api.Plan, e api.PlanEdit) error {
		if len(e.Machines) != 1 {
			return api.Errorf(api.CodeInvalid, "name one machine to remove")
		}
		n := p.GroupOf(e.Machines[0])
		if n == 0 {
			return api.Errorf(api.CodeNotFound, "machine %q is in no group of plan %q", e.Machines[0], p.Name)
		}
		g := &p.Groups[n-1]
		g.Machines = slices.DeleteFunc(g.Machines, func(m string) bool { return m == e.Machines[0] })
		delete(g.IPs, e.Machines[0])
		if len(g.IPs) == 0 {
			g.IPs = nil
		}
		return nil
	},
	api.PlanAddAction: func(p *api.Plan, e api.PlanEdit) error {
		g, err := planGroup(p, e.Group)
		if err != nil {
			return err
		}
		if e.Action == nil {
			return api.Errorf(api.CodeInvalid, "add-action needs an action")
		}
		switch e.Phase {
		case api.PhasePre:
			g.Pre = append(g.Pre, *e.Action)
		case api.PhasePost:
			g.Post = append(g.Post, *e.Action)
		default:
			return api.Errorf(api.CodeInvalid, "phase %q: want pre or post", e.Phase)
		}
		return nil
	},
}

func planGroup(p *api.Plan, n int) (*api.PlanGroup, error) {
	if n < 1 || n > len(p.Groups) {
		if len(p.Groups) == 0 {
			return nil, api.Errorf(api.CodeInvalid, "plan %q has no groups yet: add one with `ferry plans add-group`", p.Name)
		}
		return nil, api.Errorf(api.CodeInvalid, "plan %q has groups 1 to %d, not %d", p.Name, len(p.Groups), n)
	}
	return &p.Groups[n-1], nil
}

// EditPlan applies one editing verb to a plan.
func (s *Server) EditPlan(ctx context.Context, name string, e api.PlanEdit) (api.Plan, error) {
	edit, ok := planEdits[e.Op]
	if !ok {
		return api.Plan{}, api.Errorf(api.CodeInvalid, "unknown plan edit %q", e.Op)
	}
	s.planMu.Lock()
	defer s.planMu.Unlock()
	p, err := s.cat.Plan(ctx, name)
	if err != nil {
		return p, apiErr(err)
	}
	if err := edit(&p, e); err != nil {
		return p, err
	}
	numberGroups(&p)
	if err := s.validPlan(ctx, p); err != nil {
		return p, err
	}
	return p, apiErr(s.cat.PutPlan(ctx, p, false))
}

func numberGroups(p *api.Plan) {
	for i := range p.Groups {
		p.Groups[i].Number = i + 1
		if p.Groups[i].Machines == nil {
			p.Groups[i].Machines = []string{}
		}
		if len(p.Groups[i].IPs) == 0 {
			p.Groups[i].IPs = nil
		}
	}
	if p.Groups == nil {
		p.Groups = []api.PlanGroup{}
	}
}

// validPlan checks a whole plan: its name, that every machine is protected
// and in one group only, and every action's shape and agent.
func (s *Server) validPlan(ctx context.Context, p api.Plan) error {
	if err := validName("plan", p.Name); err != nil {
		return err
	}
	seen := map[string]int{}
	for _, g := range p.Groups {
		for _, m := range g.Machines {
			if first, ok := seen[m]; ok {
				if first == g.Number {
					return api.Errorf(api.CodeInvalid, "machine %q is listed twice in group %d of plan %q", m, g.Number, p.Name)
				}
				return api.Errorf(api.CodeInvalid, "machine %q is already in group %d of plan %q: a machine belongs to one group of a plan", m, first, p.Name)
			}
			seen[m] = g.Number
			pm, err := s.cat.Machine(ctx, m)
			if err != nil {
				if errors.Is(err, catalog.ErrNotFound) {
					return api.Errorf(api.CodeNotFound, "machine %q is not protected: protect it before adding it to plan %q", m, p.Name)
				}
				return apiErr(err)
			}
			if err := api.CheckNICAddresses(pm.Spec.NICs, g.IPs[m]); err != nil {
				return api.Errorf(api.CodeInvalid, "plan %q group %d machine %s: %v", p.Name, g.Number, m, err)
			}
		}
		for m := range g.IPs {
			if !slices.Contains(g.Machines, m) {
				return api.Errorf(api.CodeInvalid, "plan %q group %d: re-IP for machine %q, which is not in the group", p.Name, g.Number, m)
			}
		}
		for _, phase := range []struct {
			name    string
			actions []api.PlanAction
		}{{api.PhasePre, g.Pre}, {api.PhasePost, g.Post}} {
			for i, a := range phase.actions {
				if err := a.Check(); err != nil {
					return api.Errorf(api.CodeInvalid, "plan %q group %d %s action %d: %v", p.Name, g.Number, phase.name, i+1, err)
				}
				if a.On == "" {
					continue
				}
				if err := s.planScriptAgent(ctx, a.On); err != nil {
					return api.Errorf(errCode(err), "plan %q group %d %s action %d: %v", p.Name, g.Number, phase.name, i+1, err)
				}
			}
		}
	}
	return nil
}

// planScriptAgent checks that a script action's agent exists and, when it
// is connected, allows plan scripts.
func (s *Server) planScriptAgent(ctx context.Context, name string) error {
	a, err := s.cat.Agent(ctx, name)
	if err != nil {
		if errors.Is(err, catalog.ErrNotFound) {
			return api.Errorf(api.CodeNotFound, "agent %q is not enrolled", name)
		}
		return apiErr(err)
	}
	return s.refusedByAgent(a.ID, a.Name, allowPlanScripts)
}

// refuseInPlans refuses to unprotect a machine a plan names: the plan
// would then move a machine that is gone. Call with planMu held.
func (s *Server) refuseInPlans(ctx context.Context, machine string) error {
	ps, err := s.cat.Plans(ctx)
	if err != nil {
		return err
	}
	var in []string
	for _, p := range ps {
		if g := p.GroupOf(machine); g != 0 {
			in = append(in, fmt.Sprintf("%s (group %d)", p.Name, g))
		}
	}
	if len(in) == 0 {
		return nil
	}
	return api.Errorf(api.CodeFailedPrecondition, "machine %s is in recovery plan %s: remove it first (ferry plans remove-machine PLAN %s)",
		machine, strings.Join(in, ", "), machine)
}

// errCode is an error's API code (internal when it has none).
func errCode(err error) string {
	var ae *api.Error
	if errors.As(apiErr(err), &ae) {
		return ae.Code
	}
	return api.CodeInternal
}
