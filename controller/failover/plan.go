package failover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/jobs"
)

// PlanRun is the recovery plan a job runs, as it was when the job started:
// its groups hold only the members that move; Skipped says why each other
// member does not (already on the chosen side, or a state the lifecycle
// table refuses for the job's action).
type PlanRun struct {
	Name    string            `json:"name"`
	Groups  []api.PlanGroup   `json:"groups"`
	Skipped map[string]string `json:"skipped,omitempty"`
}

// GroupOf returns the number of the group a moving member is in (0: none).
func (p *PlanRun) GroupOf(machine string) int {
	return api.Plan{Groups: p.Groups}.GroupOf(machine)
}

// planPhases splits a kind's steps for a plan run in two phases (the
// planned failover): phase 1 stops the sources group by group in reverse
// order (stop), then takes the final cycles and moves every disk (move);
// phase 2 starts the groups in order with their actions (start). A
// failure in phase 1 rolls everything back; in phase 2 it stops the plan
// where it is.
type planPhases struct {
	stop, move, start []string
}

// Plan step operations.
const (
	opActions  = "actions"  // a group's pre or post actions
	opMachines = "machines" // machines running (some of) their own steps in parallel
)

// planStep is one step of a plan job.
type planStep struct {
	name     string
	op       string
	group    int    // 0 for move-all
	phase    string // actions: pre | post
	machines []string
	inner    []string // the kind's steps each machine runs (nil: all)
	starts   bool     // phase 2 begins here (two-phase kinds)
}

// planLayout is the step list of a plan job: per group in order its pre
// actions, its machines (all their steps, in parallel), its post actions;
// a two-phase kind first stops the groups in reverse order and moves every
// disk.
func (k *kind) planLayout(s Spec) []planStep {
	var out []planStep
	ph := k.def.planPhases
	if ph != nil {
		for i := len(s.Plan.Groups) - 1; i >= 0; i-- {
			g := s.Plan.Groups[i]
			out = append(out, planStep{name: fmt.Sprintf("stop-group-%d", g.Number), op: opMachines, group: g.Number, machines: g.Machines, inner: ph.stop})
		}
		out = append(out, planStep{name: "move-all", op: opMachines, machines: s.Machines, inner: ph.move})
	}
	first := true
	for _, g := range s.Plan.Groups {
		if len(g.Pre) > 0 {
			out = append(out, planStep{name: fmt.Sprintf("pre-group-%d", g.Number), op: opActions, group: g.Number, phase: "pre", starts: ph != nil && first})
			first = false
		}
		st := planStep{name: fmt.Sprintf("group-%d", g.Number), op: opMachines, group: g.Number, machines: g.Machines, starts: ph != nil && first}
		if ph != nil {
			st.name, st.inner = fmt.Sprintf("start-group-%d", g.Number), ph.start
		}
		first = false
		out = append(out, st)
		if len(g.Post) > 0 {
			out = append(out, planStep{name: fmt.Sprintf("post-group-%d", g.Number), op: opActions, group: g.Number, phase: "post"})
		}
	}
	return out
}

func (k *kind) planSteps(s Spec) []step {
	var out []step
	for _, ps := range k.planLayout(s) {
		out = append(out, step{name: ps.name})
	}
	return out
}

// IPsOf is the plan's re-IP of a moving member, as the job started with
// it (nil: none, or no plan): it overrides the machine's own NIC by NIC
// (api.OverrideIPs).
func (p *PlanRun) IPsOf(machine string) []api.NICAddress {
	if p == nil {
		return nil
	}
	for _, g := range p.Groups {
		if ips := g.IPsOf(machine); len(ips) > 0 {
			return ips
		}
	}
	return nil
}

// PlanOf tells the jobs engine the plan a job runs, each moving member's
// group, and the members it skips with why (jobs.Planned).
func (k *kind) PlanOf(raw json.RawMessage) (string, map[string]int, map[string]string) {
	var s Spec
	if json.Unmarshal(raw, &s) != nil || s.Plan == nil {
		return "", nil, nil
	}
	groups := map[string]int{}
	for _, g := range s.Plan.Groups {
		for _, m := range g.Machines {
			groups[m] = g.Number
		}
	}
	return s.Plan.Name, groups, s.Plan.Skipped
}

var _ jobs.Planned = (*kind)(nil)

// runPlanStep runs one step of a plan job.
func (k *kind) runPlanStep(ctx context.Context, j *job, d *jobData, name string) error {
	i := slices.IndexFunc(k.planLayout(j.spec), func(ps planStep) bool { return ps.name == name })
	if i < 0 {
		return fmt.Errorf("plan job of kind %s has no step %q", k.def.name, name)
	}
	ps := k.planLayout(j.spec)[i]
	j.saver = newDataSaver(d)
	if ps.starts && !d.Phase2 {
		d.Phase2 = true
		if err := j.saver.phase2(j.r); err != nil {
			return err
		}
	}
	if ps.op == opActions {
		return j.runActions(ctx, ps)
	}
	return j.runMachines(ctx, d, ps)
}

// runMachines runs the step's machines at once, each through its own
// steps. A machine's failure ends the plan at the end of the step for a
// two-phase or all-or-nothing kind; otherwise (an unplanned failover) the
// plan runs on and ends partial.
func (j *job) runMachines(ctx context.Context, d *jobData, ps planStep) error {
	type result struct {
		name string
		err  error
	}
	var wg sync.WaitGroup
	results := make(chan result, len(ps.machines))
	ran := 0
	for _, m := range ps.machines {
		md := d.M[m]
		if md == nil {
			md = &machineData{}
			d.M[m] = md
		}
		if md.Failed {
			continue
		}
		ran++
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- result{m, j.runMachineSteps(ctx, m, md, ps.inner)}
		}()
	}
	wg.Wait()
	close(results)
	if ran == 0 {
		return jobs.ErrSkip
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var failed []string
	var firstErr error
	for res := range results {
		if res.err == nil {
			continue
		}
		if errors.Is(res.err, errPlanCancelled) {
			return res.err // the engine rolls the job back
		}
		d.M[res.name].Failed = true
		j.r.SetMachine(res.name, "failed", 0, res.err)
		failed = append(failed, res.name)
		if firstErr == nil {
			firstErr = res.err
		}
	}
	if len(failed) == 0 {
		return nil
	}
	slices.Sort(failed)
	if err := j.saver.saveAll(j.r, d); err != nil {
		return err
	}
	if j.def.planPhases != nil || j.def.allOrNothing {
		return &Refusal{Msg: fmt.Sprintf("%s failed (%s): the plan stops here", strings.Join(failed, ", "), firstErr), Err: firstErr}
	}
	j.r.Note("%s failed; the plan runs on (the job ends partial)", strings.Join(failed, ", "))
	return nil
}

// errPlanCancelled stops a plan machine between two of its steps.
var errPlanCancelled = errors.New("cancelled")

// runMachineSteps runs a machine's steps (those named in inner, or all)
// that it has not completed, retrying what a retry can fix until the
// job's deadline. Each step's start and end are recorded on the machine.
func (j *job) runMachineSteps(ctx context.Context, name string, md *machineData, inner []string) error {
	for _, st := range j.def.steps(j.spec) {
		if inner != nil && !slices.Contains(inner, st.name) {
			continue
		}
		if slices.Contains(md.Done, st.name) {
			continue
		}
		if j.r.CancelRequested() {
			return errPlanCancelled
		}
		j.r.MachineStep(name, st.name, api.StepRunning, nil)
		state := api.StepSucceeded
		for attempt := 0; ; attempt++ {
			err := st.run(ctx, j, name, md)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, jobs.ErrSkip) {
				state, err = api.StepSkipped, nil
			}
			if err == nil {
				break
			}
			if jobs.IsRetryable(err) && time.Now().Before(j.r.Deadline()) && !j.r.CancelRequested() {
				wait := min(time.Duration(1<<min(attempt, 5))*time.Second, 30*time.Second)
				j.r.MachineNote(name, fmt.Sprintf("%s: attempt %d failed (%v); retrying in %s", st.name, attempt+1, err, wait))
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(wait):
				}
				continue
			}
			j.r.MachineStep(name, st.name, api.StepFailed, err)
			return fmt.Errorf("%s: %w", st.name, err)
		}
		md.Done = append(md.Done, st.name)
		if err := j.saveMachineData(name, md); err != nil {
			return err
		}
		j.r.MachineStep(name, st.name, state, nil)
	}
	return nil
}

// complete reports whether a machine ran every step of the kind.
func (j *job) complete(md *machineData) bool {
	for _, st := range j.def.steps(j.spec) {
		if !slices.Contains(md.Done, st.name) {
			return false
		}
	}
	return true
}

// finishPlan undoes what a plan job that did not succeed leaves half done.
// A two-phase kind failed in phase 1 rolls every machine back (targets,
// then sources restarted, group by group) and undoes the actions that
// ran; failed in phase 2 it leaves everything where it is. Other kinds
// undo the machines that did not complete, as a single-machine job would.
func (k *kind) finishPlan(ctx context.Context, j *job, d *jobData, state string) {
	if k.def.planPhases != nil {
		if d.Phase2 {
			for _, name := range j.spec.Machines {
				if md := d.M[name]; md != nil && !md.Failed && !j.complete(md) {
					j.r.SetMachine(name, "moved", 0, nil)
					j.r.MachineNote(name, fmt.Sprintf("not started: its source is stopped and its disks at the recovery site hold its final point; 'ferry failover --plan %s' starts the rest of the plan", j.spec.Plan.Name))
				}
			}
			j.r.Note("phase 2 failed: nothing was rolled back; each machine's state is listed; 'ferry revert --plan %s' brings the started machines back home", j.spec.Plan.Name)
			return
		}
		j.undoActions(ctx)
		for _, name := range j.spec.Machines {
			md := d.M[name]
			if md == nil || md.TargetAgent == "" {
				continue
			}
			if k.def.rollback != nil {
				if err := k.def.rollback(ctx, j, name, md); err != nil {
					j.r.MachineNote(name, fmt.Sprintf("rolling the target back failed: %v", err))
				}
			}
			j.revert(ctx, name, md)
			j.r.SetMachine(name, "rolled-back", 0, nil)
		}
		j.r.Note("phase 1 failed: every machine was rolled back and its source restarted; nothing was started")
		return
	}
	for _, name := range j.spec.Machines {
		md := d.M[name]
		if md == nil || (!md.Failed && (len(md.Done) == 0 || j.complete(md))) {
			continue
		}
		if k.def.onFailure != nil {
			k.def.onFailure(ctx, j, name, md)
			continue
		}
		j.revert(ctx, name, md)
	}
}

// dataSaver saves the job data of machines running in parallel: each
// machine's goroutine owns its machineData, and the saver keeps a copy of
// each to write the whole job data at once, under one lock.
type dataSaver struct {
	mu sync.Mutex
	d  jobData
}

func newDataSaver(d *jobData) *dataSaver {
	s := &dataSaver{d: jobData{M: map[string]*machineData{}, Phase2: d.Phase2}}
	for name, md := range d.M {
		cp := *md
		cp.Done = slices.Clone(md.Done)
		s.d.M[name] = &cp
	}
	return s
}

func (s *dataSaver) save(r *jobs.Run, name string, md *machineData) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := *md
	cp.Done = slices.Clone(md.Done)
	s.d.M[name] = &cp
	return r.SetData(s.d)
}

func (s *dataSaver) saveAll(r *jobs.Run, d *jobData) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, md := range d.M {
		cp := *md
		cp.Done = slices.Clone(md.Done)
		s.d.M[name] = &cp
	}
	return r.SetData(s.d)
}

func (s *dataSaver) phase2(r *jobs.Run) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d.Phase2 = true
	return r.SetData(s.d)
}

// planGroupEnv is the FERRY_* context of a plan's action.
func (j *job) planGroupEnv(group int, phase string) map[string]string {
	return map[string]string{
		"FERRY_JOB": j.r.ID(), "FERRY_KIND": j.r.Kind(), "FERRY_PLAN": j.spec.Plan.Name,
		"FERRY_GROUP": strconv.Itoa(group), "FERRY_PHASE": phase,
	}
}
