package failover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/controller/lifecycle"
)

// Job kinds.
const (
	KindFailover    = "failover"
	KindTest        = "test-failover"
	KindPlanned     = "planned-failover"
	KindCommit      = "commit"
	KindCleanup     = "cleanup"
	KindChangePoint = "change-point"
	// KindReprotect replicates a committed failover's machine home;
	// KindReprotectForward restores the forward direction after a
	// failback; KindFailback brings the machine home (planned).
	KindReprotect        = "reprotect"
	KindReprotectForward = "reprotect-forward"
	KindFailback         = "failback"
)

// Spec is what a failover-family job was asked to do (never the key).
type Spec struct {
	Machines []string            `json:"machines"`
	Req      api.FailoverRequest `json:"req"`
	Point    string              `json:"point,omitempty"` // change-point
	// Action is what reprotect and failback were asked (their flags).
	Action api.MachineActionRequest `json:"action,omitzero"`
	// Plan is set when the job runs a recovery plan (plan.go): Machines
	// are then the members that move, group by group.
	Plan *PlanRun `json:"plan,omitempty"`
	// Preempted says what the job ended before it started: a drill or a
	// test it cancelled and cleaned up (a disaster beats a test). The
	// prerequisites note it on the machine.
	Preempted []string `json:"preempted,omitempty"`
}

// machineData is what a job remembers per machine between steps.
type machineData struct {
	Target      string `json:"target"`
	TargetAgent string `json:"target_agent"`
	Dir         string `json:"dir"`
	SourceAgent string `json:"source_agent"`
	// SourceSeen: the job found the source agent connected (prerequisites);
	// one missing later is expected back (latest's grace period).
	SourceSeen    bool   `json:"source_seen,omitempty"`
	Point         int64  `json:"point"`
	StagedFrom    int64  `json:"staged_from"`
	StagedExisted bool   `json:"staged_existed"`
	Set           string `json:"set"`
	DriverName    string `json:"driver_name"`
	// Started is recorded durably before this job runs the target
	// driver's start: only then may a later attempt take "running" for
	// the job's own machine.
	Started   bool  `json:"started"`
	UsedPause bool  `json:"used_pause"`
	Failed    bool  `json:"failed"`
	Writes    int64 `json:"writes,omitempty"` // change-point: the point keeping the target's writes
	// The round trip (roundtrip.go): the home agent's directory for the
	// home disk set, the state the job started from, whether it stopped
	// the machine at the recovery site, and the point that kept the home
	// disks before they were overwritten.
	HomeDir       string `json:"home_dir,omitempty"`
	FromState     string `json:"from_state,omitempty"`
	StoppedTarget bool   `json:"stopped_target,omitempty"`
	Divergent     int64  `json:"divergent,omitempty"`
	// RanOn is the point a change-point's machine ran on before the job
	// (stopTarget records StoppedTarget durably before its stop): a
	// cancelled change-point returns to both.
	RanOn int64 `json:"ran_on,omitempty"`
	// StartedHome: a revert is about to start, or started, the machine
	// at home (revert.go): it is then never restarted at the recovery site.
	StartedHome bool `json:"started_home,omitempty"`
	// The unplanned failback (roundtrip_unplanned.go): the recovery site
	// was unreachable and is fenced when it reconnects; the job stopped
	// the machine at home (change-point of a failed-back machine); the
	// home move began or ended; the point keeping the recovery site's
	// disks (forward re-protect).
	FenceOwed         bool  `json:"fence_owed,omitempty"`
	StoppedHome       bool  `json:"stopped_home,omitempty"`
	MoveBegun         bool  `json:"move_begun,omitempty"`
	Moved             bool  `json:"moved,omitempty"`
	RecoveryDivergent int64 `json:"recovery_divergent,omitempty"`
	// Done lists the machine's own steps completed in a plan job (its
	// machines run their steps independently, in parallel).
	Done []string `json:"done,omitempty"`
}

type jobData struct {
	M map[string]*machineData `json:"m"`
	// Phase2 is set durably before a planned plan failover starts its
	// first group: a failure from then on is not rolled back.
	Phase2 bool `json:"phase2,omitempty"`
}

// kindDef is one job kind as data: its lifecycle action, its steps, and
// what its shared steps do differently. Each kind is defined in its own
// file (kind_*.go); adding a kind is one such file and rows in the
// lifecycle table.
type kindDef struct {
	name string
	// action is the lifecycle action the kind carries out: its first step
	// checks it against the lifecycle table, and the table's next state is
	// what the machine becomes when the job completes.
	action lifecycle.Action
	// steps is the kind's step list for a spec.
	steps func(Spec) []step
	// set is the disk set the machine runs on at the target, and
	// driverName the name the target driver knows the machine by.
	set        func(jobID string) string
	driverName func(machine string) string
	// test: the driver is told FERRY_TEST=1, the failover record names the
	// test machine, and replication goes on.
	test bool
	// pausesReplication: the source stops shipping cycles before any disk
	// is touched.
	pausesReplication bool
	// precheck is a kind's own prerequisite beyond the lifecycle table.
	precheck func(ctx context.Context, j *job, name string, md *machineData) error
	// allOrNothing: one machine's failure fails the whole job (the others
	// stop too); otherwise a job of several machines runs on.
	allOrNothing bool
	// rollback undoes one machine's target work after a cancel (nil:
	// nothing to undo).
	rollback stepFunc
	// revertOnFailure: a job that did not succeed puts the machine back to
	// replicating; resyncOnFailure makes that a hash resync;
	// restartSource restarts (or resumes) the source it stopped.
	revertOnFailure bool
	resyncOnFailure bool
	restartSource   bool
	// onFailure, when set, replaces revert for a job that did not succeed.
	onFailure func(ctx context.Context, j *job, name string, md *machineData)
	// planPhases, when set, runs a plan job of the kind in two phases
	// (plan.go); otherwise each group's machines run all their steps.
	planPhases *planPhases
}

// Kinds returns the job kinds of this package, for the jobs engine.
func (e *Engine) Kinds() map[string]jobs.Kind {
	out := map[string]jobs.Kind{}
	for _, d := range []*kindDef{&failoverKind, &testFailoverKind, &plannedFailoverKind, &changePointKind, &commitKind, &cleanupKind,
		&reprotectKind, &reprotectForwardKind, &failbackKind, &failbackUnplannedKind, &changePointHomeKind,
		&testFailbackKind, &cleanupTestFailbackKind, &revertKind} {
		out[d.name] = &kind{e: e, def: d}
	}
	return out
}

// kind runs a kindDef as a jobs.Kind.
type kind struct {
	e   *Engine
	def *kindDef
}

// job is one run of a kind: what every step of it sees.
type job struct {
	*kind
	r    *jobs.Run
	spec Spec
	// saver, when set, is how the machines of a plan group running in
	// parallel save their data (saveMachineData) without losing each
	// other's updates.
	saver *dataSaver
}

func (k *kind) stepList(s Spec) []step {
	if s.Plan != nil {
		return k.planSteps(s)
	}
	if s.Req.DryRun {
		return k.def.steps(s)[:1] // check, touch nothing
	}
	return k.def.steps(s)
}

// Steps returns the kind's step names for a spec.
func (k *kind) Steps(raw json.RawMessage) ([]string, error) {
	var s Spec
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	var names []string
	for _, st := range k.stepList(s) {
		names = append(names, st.name)
	}
	return names, nil
}

func (k *kind) open(r *jobs.Run) (*job, *jobData, error) {
	j := &job{kind: k, r: r}
	if err := r.Spec(&j.spec); err != nil {
		return nil, nil, err
	}
	var d jobData
	if err := r.Data(&d); err != nil {
		return nil, nil, err
	}
	if d.M == nil {
		d.M = map[string]*machineData{}
	}
	return j, &d, nil
}

// Run runs one step for every machine of the job.
func (k *kind) Run(ctx context.Context, r *jobs.Run, name string) error {
	j, d, err := k.open(r)
	if err != nil {
		return err
	}
	if j.spec.Plan != nil {
		return k.runPlanStep(ctx, j, d, name)
	}
	var run stepFunc
	for _, st := range k.stepList(j.spec) {
		if st.name == name {
			run = st.run
		}
	}
	if run == nil {
		return fmt.Errorf("job kind %s has no step %q", k.def.name, name)
	}
	var ok, failed int
	var firstErr error
	skipped := true
	for _, m := range j.spec.Machines {
		md := d.M[m]
		if md == nil {
			md = &machineData{}
			d.M[m] = md
		}
		if md.Failed {
			failed++
			continue
		}
		err := run(ctx, j, m, md)
		if errors.Is(err, jobs.ErrSkip) {
			err = nil
		} else {
			skipped = false
		}
		if serr := r.SetData(d); serr != nil {
			return serr
		}
		if err == nil {
			ok++
			continue
		}
		if jobs.IsRetryable(err) {
			return err // the engine retries the step (steps are idempotent)
		}
		if len(j.spec.Machines) == 1 || k.def.allOrNothing {
			r.SetMachine(m, "failed", 0, err)
			return err
		}
		// A plan's unplanned failover runs on despite one machine's error.
		md.Failed = true
		r.SetMachine(m, "failed", 0, err)
		if serr := r.SetData(d); serr != nil {
			return serr
		}
		failed++
		if firstErr == nil {
			firstErr = err
		}
	}
	if ok == 0 && failed > 0 {
		return fmt.Errorf("every machine failed: %w", firstErr)
	}
	if skipped && ok > 0 {
		return jobs.ErrSkip
	}
	return nil
}

// Rollback undoes a cancelled job's target work, machine by machine.
func (k *kind) Rollback(ctx context.Context, r *jobs.Run) error {
	j, d, err := k.open(r)
	if err != nil {
		return err
	}
	if j.spec.Plan != nil {
		defer j.undoActions(ctx)
	}
	if k.def.rollback == nil {
		return nil // nothing to undo at a step boundary
	}
	var errs []error
	for _, name := range j.spec.Machines {
		md := d.M[name]
		if md == nil || md.TargetAgent == "" {
			continue
		}
		if err := k.def.rollback(ctx, j, name, md); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Finish puts machines back to replicating after a job that did not
// complete, and forgets the job's key.
func (k *kind) Finish(ctx context.Context, r *jobs.Run, state string) {
	defer k.e.DropKey(r.ID())
	if state == api.JobSucceeded || (!k.def.revertOnFailure && k.def.onFailure == nil) {
		return
	}
	j, d, err := k.open(r)
	if err != nil {
		r.Note("reading the job's data to undo it failed: %v", err)
		return
	}
	if j.spec.Plan != nil && state != api.JobCancelled {
		k.finishPlan(ctx, j, d, state)
		return
	}
	for _, name := range j.spec.Machines {
		md := d.M[name]
		if md == nil {
			md = &machineData{}
		}
		if state == api.JobPartial && !md.Failed {
			continue
		}
		if k.def.onFailure != nil {
			k.def.onFailure(ctx, j, name, md)
			continue
		}
		j.revert(ctx, name, md)
	}
}
