package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/protocol"
)

// ErrSkip, returned by a step, marks it skipped instead of succeeded.
var ErrSkip = errors.New("step skipped")

// Retryable is implemented by errors that say whether trying again can help.
type Retryable interface{ Retryable() bool }

// Kind is one kind of job (failover, commit, …).
type Kind interface {
	// Steps returns the step names for a job's spec.
	Steps(spec json.RawMessage) ([]string, error)
	// Run executes one step; it must be idempotent.
	Run(ctx context.Context, r *Run, step string) error
	// Rollback undoes what the job did, after a cancel.
	Rollback(ctx context.Context, r *Run) error
	// Finish runs once when the job ends, with its final state, e.g. to
	// resume replication after a failure. It must not fail the job.
	Finish(ctx context.Context, r *Run, state string)
}

// Store persists jobs and machine locks (the catalog).
type Store interface {
	PutJob(ctx context.Context, j catalog.JobRow) error
	Job(ctx context.Context, id string) (catalog.JobRow, error)
	Jobs(ctx context.Context, states ...string) ([]catalog.JobRow, error)
	LockMachines(ctx context.Context, jobID string, machines []string) error
	UnlockMachines(ctx context.Context, jobID string) error
}

// record is what is persisted: the job as the API shows it, plus the spec
// and the kind's private data.
type record struct {
	api.Job
	Spec     json.RawMessage `json:"spec"`
	Data     json.RawMessage `json:"data,omitempty"`
	Deadline time.Time       `json:"deadline"`
	// RollingBack is set, durably, before a cancelled job's rollback
	// starts: a job resumed after a restart finishes the rollback instead
	// of taking its completed steps for success.
	RollingBack bool `json:"rolling_back,omitempty"`
	// Resumed lists the manual actions `jobs resume` confirmed (their
	// keys): a step that reruns after a restart does not wait again.
	Resumed []string `json:"resumed,omitempty"`
}

// Planned is implemented by kinds whose jobs can run a recovery plan: the
// job then records the plan's name, each machine's group, and the members
// it skips (with why) from the start. Skipped members are listed in the
// job (state skipped) but not locked: the job does not touch them.
type Planned interface {
	PlanOf(spec json.RawMessage) (plan string, groups map[string]int, skipped map[string]string)
}

// Engine runs jobs.
type Engine struct {
	store Store
	kinds map[string]Kind
	log   *slog.Logger
	now   func() time.Time

	mu       sync.Mutex
	active   map[string]*Run
	watchers map[string][]chan api.Job
	wg       sync.WaitGroup
	ctx      context.Context
	running  bool // Resume was called: jobs run in ctx

	hooks Hooks
	onEnd func(api.Job)
}

// Hooks are test hooks of the engine; the zero value (production) has none.
type Hooks struct {
	// BeforeStep runs before each step a job starts (after the previous
	// step's end is recorded, before the cancel check): a test stops
	// there, cancels, or restarts the controller. An error fails the step
	// as the step itself would, unless the engine's context ended (then
	// the job stops and resumes at the next start).
	BeforeStep func(ctx context.Context, job, step string) error
	// Failpoint is called at the named transitions below, after the
	// transition is durable (a crash test kills the process there).
	Failpoint func(name string)
}

// Failpoint names (docs/crash-semantics.md "Jobs").
const (
	FailStepRunning = "job.step-running" // a step recorded running, before it runs
	FailStepDone    = "job.step-done"    // a step recorded succeeded or skipped
	FailRollingBack = "job.rolling-back" // a cancel's rollback recorded, before it runs
)

// OnEnd has f told of each job that ends (once, with its final state),
// after its watchers: metrics and alerts. Call before Resume.
func (e *Engine) OnEnd(f func(api.Job)) { e.onEnd = f }

// SetHooks installs test hooks; call before Resume.
func (e *Engine) SetHooks(h Hooks) { e.hooks = h }

func (e *Engine) failpoint(name string) {
	if e.hooks.Failpoint != nil {
		e.hooks.Failpoint(name)
	}
}

// ErrNotRunning refuses a job started before the engine runs (Resume).
var ErrNotRunning = errors.New("the job engine is not running yet")

// New builds an engine; Resume starts it.
func New(store Store, kinds map[string]Kind, log *slog.Logger, now func() time.Time) *Engine {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &Engine{store: store, kinds: kinds, log: log, now: now,
		active: map[string]*Run{}, watchers: map[string][]chan api.Job{}}
}

// DefaultTimeout is a job's deadline when none is given.
const DefaultTimeout = 30 * time.Minute

// Start creates a job, locks its machines and runs it in the background.
func (e *Engine) Start(ctx context.Context, kind string, machines []string, spec any, timeout time.Duration) (api.Job, error) {
	return e.StartWith(ctx, kind, machines, spec, timeout, nil)
}

// StartWith is Start with a hook that runs once the job has its id and
// before its first step (e.g. to hand it a key held in memory only).
func (e *Engine) StartWith(ctx context.Context, kind string, machines []string, spec any, timeout time.Duration, before func(id string) error) (api.Job, error) {
	e.mu.Lock()
	running := e.running
	e.mu.Unlock()
	if !running {
		return api.Job{}, ErrNotRunning
	}
	k, ok := e.kinds[kind]
	if !ok {
		return api.Job{}, fmt.Errorf("unknown job kind %q", kind)
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return api.Job{}, err
	}
	steps, err := k.Steps(raw)
	if err != nil {
		return api.Job{}, err
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	now := e.now()
	rec := &record{Spec: raw, Deadline: now.Add(timeout)}
	rec.ID = newJobID()
	rec.Kind, rec.State, rec.Created, rec.Updated = kind, api.JobQueued, now, now
	for _, s := range steps {
		rec.Steps = append(rec.Steps, api.JobStep{Name: s, State: api.StepPending})
	}
	for _, m := range machines {
		rec.Machines = append(rec.Machines, api.JobMachine{Name: m, State: "pending"})
	}
	lock := machines
	if p, ok := k.(Planned); ok {
		plan, groups, skipped := p.PlanOf(raw)
		rec.Plan = plan
		lock = nil
		for i := range rec.Machines {
			m := &rec.Machines[i]
			m.Group = groups[m.Name]
			if why, ok := skipped[m.Name]; ok {
				m.State, m.Notes = api.StepSkipped, []string{"skipped: " + why}
				continue
			}
			lock = append(lock, m.Name)
		}
		if len(skipped) > 0 {
			var names []string
			for _, m := range rec.Machines {
				if _, ok := skipped[m.Name]; ok {
					names = append(names, m.Name)
				}
			}
			rec.Notes = append(rec.Notes, fmt.Sprintf("skipped members of plan %s: %s", plan, strings.Join(names, ", ")))
		}
	}
	if err := e.store.LockMachines(ctx, rec.ID, lock); err != nil {
		if errors.Is(err, catalog.ErrLocked) {
			return api.Job{}, api.Errorf(api.CodeBusy, "%v", err)
		}
		return api.Job{}, err
	}
	if before != nil {
		if err := before(rec.ID); err != nil {
			e.store.UnlockMachines(ctx, rec.ID)
			return api.Job{}, err
		}
	}
	if err := e.save(ctx, rec); err != nil {
		e.store.UnlockMachines(ctx, rec.ID)
		return api.Job{}, err
	}
	return e.launch(rec).snapshot(), nil
}

// DryRun runs a kind's first step (its checks) for a spec, at once and in
// ctx, without recording a job or taking the machines' locks: the answer
// is the job as it would start, in state api.JobDryRun, or the step's
// error. before runs first with the dry run's id (e.g. to hand it a key)
// and after at the end.
func (e *Engine) DryRun(ctx context.Context, kind string, machines []string, spec any, before func(id string) error, after func(id string)) (api.Job, error) {
	k, ok := e.kinds[kind]
	if !ok {
		return api.Job{}, fmt.Errorf("unknown job kind %q", kind)
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return api.Job{}, err
	}
	steps, err := k.Steps(raw)
	if err != nil {
		return api.Job{}, err
	}
	now := e.now()
	rec := &record{Spec: raw, Deadline: now}
	rec.ID = "dry-run-" + newJobID()
	rec.Kind, rec.State, rec.Created, rec.Updated = kind, api.JobRunning, now, now
	rec.Steps = []api.JobStep{{Name: steps[0], State: api.StepRunning, Started: now}}
	for _, m := range machines {
		rec.Machines = append(rec.Machines, api.JobMachine{Name: m, State: "pending"})
	}
	if before != nil {
		if err := before(rec.ID); err != nil {
			return api.Job{}, err
		}
	}
	if after != nil {
		defer after(rec.ID)
	}
	r := &Run{e: e, rec: rec, ephemeral: true}
	if err := k.Run(ctx, r, steps[0]); err != nil && !errors.Is(err, ErrSkip) {
		return api.Job{}, err
	}
	r.mu.Lock()
	rec.State, rec.Steps[0].State, rec.Steps[0].Ended, rec.Steps[0].Progress = api.JobDryRun, api.StepSucceeded, e.now(), 1
	r.mu.Unlock()
	return r.snapshot(), nil
}

// Resume restarts every job a previous controller left unfinished. Call
// once at start with the server's lifetime context.
func (e *Engine) Resume(ctx context.Context) error {
	e.mu.Lock()
	if e.running {
		e.mu.Unlock()
		return errors.New("the job engine is running already")
	}
	e.ctx, e.running = ctx, true
	e.mu.Unlock()
	rows, err := e.store.Jobs(ctx, api.JobQueued, api.JobRunning, api.JobWaiting)
	if err != nil {
		return err
	}
	for _, row := range rows {
		rec := &record{}
		if err := json.Unmarshal([]byte(row.Data), rec); err != nil {
			e.log.Error("job record unreadable", "job", row.ID, "err", err)
			continue
		}
		rec.Notes = append(rec.Notes, fmt.Sprintf("%s: resumed after a controller restart", e.now().Format(time.RFC3339)))
		// A job that waited on a manual action waits again once its step
		// reruns and reaches it (unless the resume was recorded): until
		// then it runs, and `jobs resume` has nothing to confirm.
		rec.Waiting = nil
		if rec.State == api.JobWaiting {
			rec.State = api.JobRunning
		}
		e.log.Info("resuming job", "job", rec.ID, "kind", rec.Kind)
		e.launch(rec)
	}
	return nil
}

// Wait waits for running jobs to stop (after the context ended).
func (e *Engine) Wait() { e.wg.Wait() }

func (e *Engine) launch(rec *record) *Run {
	r := &Run{e: e, rec: rec, wake: make(chan struct{}, 1)}
	e.mu.Lock()
	e.active[rec.ID] = r
	e.mu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		r.run(e.ctx)
		// A controller stopping ends the run mid-step: what it showed
		// last is stored before the catalog closes (Wait).
		r.flushSoon()
	}()
	return r
}

// Get returns a job.
func (e *Engine) Get(ctx context.Context, id string) (api.Job, error) {
	e.mu.Lock()
	r, ok := e.active[id]
	e.mu.Unlock()
	if ok {
		return r.snapshot(), nil
	}
	row, err := e.store.Job(ctx, id)
	if err != nil {
		if errors.Is(err, catalog.ErrNotFound) {
			return api.Job{}, api.Errorf(api.CodeNotFound, "no job %s", id)
		}
		return api.Job{}, err
	}
	rec := &record{}
	if err := json.Unmarshal([]byte(row.Data), rec); err != nil {
		return api.Job{}, err
	}
	return rec.Job, nil
}

// List returns jobs, newest first.
func (e *Engine) List(ctx context.Context) ([]api.Job, error) {
	rows, err := e.store.Jobs(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.Job{}
	for _, row := range rows {
		j, err := e.Get(ctx, row.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, nil
}

// liveRun returns a job's live run, or, for a job not running here, the
// job as stored and a refusal saying what only a running job allows.
func (e *Engine) liveRun(ctx context.Context, id, only string) (*Run, api.Job, error) {
	e.mu.Lock()
	r, ok := e.active[id]
	e.mu.Unlock()
	if ok {
		return r, api.Job{}, nil
	}
	j, err := e.Get(ctx, id)
	if err != nil {
		return nil, j, err
	}
	return nil, j, api.Errorf(api.CodeFailedPrecondition, "job %s is %s: %s", id, j.State, only)
}

// Cancel asks a running job to stop at its next step boundary and roll
// back. A cancel that can no longer take effect is refused with the
// reason: the job has ended, or it runs its last step (after which there
// is no boundary to stop at).
func (e *Engine) Cancel(ctx context.Context, id string) (api.Job, error) {
	r, j, err := e.liveRun(ctx, id, "only a running job can be cancelled")
	if r == nil {
		return j, err
	}
	r.mu.Lock()
	err = r.cancellable()
	if err == nil {
		r.rec.CancelReq = true
	}
	r.mu.Unlock()
	if err != nil {
		return r.snapshot(), err
	}
	if err := r.persist(); err != nil {
		return r.snapshot(), err
	}
	r.wakeUp() // a job waiting on a manual action stops waiting and rolls back
	return r.snapshot(), nil
}

// Continue resumes a job waiting on a manual action (`ferry jobs
// resume`). The confirmation is recorded durably before the job goes on:
// a controller restarted after it does not wait again.
func (e *Engine) Continue(ctx context.Context, id string) (api.Job, error) {
	r, j, err := e.liveRun(ctx, id, "only a job waiting on a manual action can be resumed")
	if r == nil {
		return j, err
	}
	r.mu.Lock()
	w := r.rec.Waiting
	if w == nil || r.rec.State != api.JobWaiting || r.waitKey == "" {
		state := r.rec.State
		r.mu.Unlock()
		return r.snapshot(), api.Errorf(api.CodeFailedPrecondition, "job %s is %s: only a job waiting on a manual action can be resumed", id, state)
	}
	r.rec.Resumed = append(r.rec.Resumed, r.waitKey)
	r.rec.Waiting = nil
	r.rec.State = api.JobRunning
	r.rec.Notes = append(r.rec.Notes, fmt.Sprintf("%s: resumed after the manual action %q", w.Step, w.Text))
	r.mu.Unlock()
	if err := r.persist(); err != nil {
		return r.snapshot(), err
	}
	r.wakeUp()
	return r.snapshot(), nil
}

// Cancellable says whether a cancel of the job would be accepted now
// (nil), or why not.
func (e *Engine) Cancellable(ctx context.Context, id string) error {
	e.mu.Lock()
	r, ok := e.active[id]
	e.mu.Unlock()
	if !ok {
		j, err := e.Get(ctx, id)
		if err != nil {
			return err
		}
		return api.Errorf(api.CodeFailedPrecondition, "job %s is %s: only a running job can be cancelled", id, j.State)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cancellable()
}

// Watch returns a channel of job snapshots, sent on every change and
// closed after the job ends (or when ctx ends).
func (e *Engine) Watch(ctx context.Context, id string) (<-chan api.Job, error) {
	j, err := e.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	ch := make(chan api.Job, 16)
	ch <- j
	if api.Terminal(j.State) {
		close(ch)
		return ch, nil
	}
	e.mu.Lock()
	if _, ok := e.active[id]; !ok {
		e.mu.Unlock()
		close(ch)
		return ch, nil
	}
	e.watchers[id] = append(e.watchers[id], ch)
	e.mu.Unlock()
	go func() {
		<-ctx.Done()
		e.unwatch(id, ch)
	}()
	return ch, nil
}

func (e *Engine) unwatch(id string, ch chan api.Job) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ws := e.watchers[id]
	for i, w := range ws {
		if w == ch {
			e.watchers[id] = append(ws[:i], ws[i+1:]...)
			close(ch)
			return
		}
	}
}

// notify sends a snapshot to watchers; on a terminal state it closes them.
func (e *Engine) notify(j api.Job) {
	ended := false
	defer func() {
		if ended && e.onEnd != nil {
			e.onEnd(j)
		}
	}()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ch := range e.watchers[j.ID] {
		select {
		case ch <- j:
		default: // a slow watcher misses intermediate progress, never the end
		}
	}
	if api.Terminal(j.State) {
		for _, ch := range e.watchers[j.ID] {
			// The end always arrives: only notify sends on ch (under
			// e.mu), so dropping one stale snapshot makes room.
			for sent := false; !sent; {
				select {
				case ch <- j:
					sent = true
				default:
					select {
					case <-ch:
					default:
					}
				}
			}
			close(ch)
		}
		delete(e.watchers, j.ID)
		_, ended = e.active[j.ID] // only the first terminal notify of a run
		delete(e.active, j.ID)
	}
}

func (e *Engine) save(ctx context.Context, rec *record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return e.store.PutJob(ctx, catalog.JobRow{ID: rec.ID, Kind: rec.Kind, State: rec.State, Data: string(b), Created: rec.Created, Updated: rec.Updated})
}

func newJobID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return "job-" + hex.EncodeToString(b)
}

// IsRetryable reports whether trying a failed step again can help: the
// first error in the chain that says so decides (protocol.Retryable).
func IsRetryable(err error) bool { return protocol.Retryable(err) }
