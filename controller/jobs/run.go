package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
)

// Run is a job being executed, as its kind's steps see it.
type Run struct {
	e         *Engine
	mu        sync.Mutex
	rec       *record
	step      int
	ephemeral bool // a dry run: nothing is persisted or watched
	// A plan's machines persist the job from several goroutines at once.
	// writing lets one write at a time (parallel writers would meet in
	// SQLite's busy handler, which sleeps 1, 2, 5, 10… ms between tries);
	// changed counts the record's changes and written the count the last
	// write held, so a writer whose change a later snapshot already
	// carried returns without writing again (under r.mu).
	writing         sync.Mutex
	changed, stored uint64
	storedErr       error
	// soon is set while a write of display changes is scheduled (under mu).
	soon bool
	// wake is signalled by Continue and Cancel: a step waiting on a
	// manual action looks again. waitKey is the action it waits on.
	wake    chan struct{}
	waitKey string
}

// ID is the job's id.
func (r *Run) ID() string { return r.rec.ID }

// Kind is the job's kind.
func (r *Run) Kind() string { return r.rec.Kind }

// Spec decodes the job's spec.
func (r *Run) Spec(v any) error { return json.Unmarshal(r.rec.Spec, v) }

// Data decodes the kind's private data (zero value if none yet).
func (r *Run) Data(v any) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.rec.Data) == 0 {
		return nil
	}
	return json.Unmarshal(r.rec.Data, v)
}

// SetData stores the kind's private data durably (before a step relies on it).
func (r *Run) SetData(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.rec.Data = b
	r.mu.Unlock()
	return r.persist()
}

// Machines returns the job's machine names.
func (r *Run) Machines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.rec.Machines))
	for i, m := range r.rec.Machines {
		out[i] = m.Name
	}
	return out
}

// Machine returns a machine's record in the job.
func (r *Run) Machine(name string) api.JobMachine {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.rec.Machines {
		if m.Name == name {
			return m
		}
	}
	return api.JobMachine{Name: name}
}

// SetMachine updates a machine's state, point and error in the job. What a
// resumed job relies on is its kind's data (SetData); this is what the job
// shows, stored soon (persistSoon).
func (r *Run) SetMachine(name, state string, point int64, err error) {
	r.mu.Lock()
	for i := range r.rec.Machines {
		m := &r.rec.Machines[i]
		if m.Name != name {
			continue
		}
		if state != "" {
			m.State = state
		}
		if point != 0 {
			m.PointID = point
		}
		if err != nil {
			m.Error = err.Error()
		}
	}
	r.mu.Unlock()
	r.persistSoon()
}

// MachineNote records a note on a machine (e.g. which point case applied);
// a note the machine has already is not repeated (a retried step notes again).
func (r *Run) MachineNote(name, note string) {
	r.mu.Lock()
	for i := range r.rec.Machines {
		if r.rec.Machines[i].Name == name && !slices.Contains(r.rec.Machines[i].Notes, note) {
			r.rec.Machines[i].Notes = append(r.rec.Machines[i].Notes, note)
		}
	}
	r.mu.Unlock()
	r.persistSoon()
}

// Note records a note on the current step and the job.
func (r *Run) Note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.mu.Lock()
	st := &r.rec.Steps[r.step]
	if st.Note == "" {
		st.Note = s
	} else {
		st.Note += "; " + s
	}
	r.rec.Notes = append(r.rec.Notes, st.Name+": "+s)
	r.mu.Unlock()
	r.persistSoon()
}

// Progress reports bytes moved by the current step.
func (r *Run) Progress(done, total int64) {
	r.mu.Lock()
	st := &r.rec.Steps[r.step]
	st.BytesDone, st.BytesTotal = done, total
	if total > 0 {
		st.Progress = min(1, float64(done)/float64(total))
	}
	r.mu.Unlock()
	r.persistSoon()
}

// CancelRequested reports whether the job was asked to stop.
func (r *Run) CancelRequested() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rec.CancelReq
}

// Deadline is when the job gives up retrying.
func (r *Run) Deadline() time.Time { return r.rec.Deadline }

// StepState returns the state of a named step.
func (r *Run) StepState(name string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.rec.Steps {
		if s.Name == name {
			return s.State
		}
	}
	return ""
}

func (r *Run) snapshot() api.Job {
	r.mu.Lock()
	defer r.mu.Unlock()
	j := r.rec.Job
	j.Steps = append([]api.JobStep(nil), j.Steps...)
	j.Machines = append([]api.JobMachine(nil), j.Machines...)
	for i := range j.Machines {
		j.Machines[i].Notes = append([]string(nil), j.Machines[i].Notes...)
	}
	j.Notes = append([]string(nil), j.Notes...)
	for i := range j.Machines {
		j.Machines[i].Steps = append([]api.JobStep(nil), j.Machines[i].Steps...)
	}
	j.Actions = append([]api.JobAction(nil), j.Actions...)
	if j.Waiting != nil {
		w := *j.Waiting
		j.Waiting = &w
	}
	return j
}

// cancellable is nil when a cancel can still stop the job at a step
// boundary and roll it back; r.mu is held.
func (r *Run) cancellable() error {
	if api.Terminal(r.rec.State) {
		return api.Errorf(api.CodeFailedPrecondition, "job %s is %s: only a running job can be cancelled", r.rec.ID, r.rec.State)
	}
	if r.rec.RollingBack || r.rec.CancelReq {
		return nil // already cancelled: asking again changes nothing
	}
	last := len(r.rec.Steps) - 1
	if last >= 0 && r.rec.Steps[last].State == api.StepRunning {
		return api.Errorf(api.CodeFailedPrecondition,
			"job %s is running its last step (%s): there is no step boundary left to stop at, so it can no longer be rolled back; let it end, then undo its result with the machine's allowed actions (ferry machines show)",
			r.rec.ID, r.rec.Steps[last].Name)
	}
	return nil
}

// beginStep marks step i running unless a cancel was asked for, in one
// critical section with Cancel: a cancel is either seen here or refused
// as too late.
func (r *Run) beginStep(i int) (cancelled bool) {
	r.mu.Lock()
	if r.rec.CancelReq {
		r.mu.Unlock()
		return true
	}
	r.step = i
	st := &r.rec.Steps[i]
	st.State, st.Started, st.Error = api.StepRunning, r.e.now(), ""
	r.mu.Unlock()
	r.persist()
	return false
}

// persist saves the record now and tells watchers: a change a resumed job
// relies on (its data, a step's state, an action) is durable before the
// job goes on.
func (r *Run) persist() error {
	if r.ephemeral {
		return nil
	}
	r.mu.Lock()
	r.changed++
	mine := r.changed
	r.mu.Unlock()
	err := r.store(mine)
	if err != nil {
		r.e.log.Error("persisting job failed", "job", r.rec.ID, "err", err)
	}
	r.e.notify(r.snapshot())
	return err
}

// displayDelay is how long a change that only shows the job's progress
// waits for its catalog write.
const displayDelay = 500 * time.Millisecond

// persistSoon records a change that only shows the job's progress (a note,
// a machine's own step or state, bytes moved): watchers and `jobs show`
// see it at once (they read the running job), the catalog within
// displayDelay, or sooner with the next durable change (every write holds
// the whole record). A plan of 20 machines wrote its record ~15 times per
// machine, each an fsync of the catalog, most of them for such changes.
func (r *Run) persistSoon() {
	if r.ephemeral {
		return
	}
	r.mu.Lock()
	r.changed++
	if !r.soon {
		r.soon = true
		time.AfterFunc(displayDelay, r.flushSoon)
	}
	r.mu.Unlock()
	r.e.notify(r.snapshot())
}

// flushSoon writes the changes persistSoon scheduled, unless a later
// write already holds them.
func (r *Run) flushSoon() {
	r.mu.Lock()
	r.soon = false
	mine := r.changed
	r.mu.Unlock()
	if err := r.store(mine); err != nil {
		r.e.log.Error("persisting job failed", "job", r.rec.ID, "err", err)
	}
}

// store writes the record unless a write that began after change number
// mine already did (then its result is this one's).
func (r *Run) store(mine uint64) error {
	r.writing.Lock()
	defer r.writing.Unlock()
	r.mu.Lock()
	if r.stored >= mine {
		err := r.storedErr
		r.mu.Unlock()
		return err
	}
	r.rec.Updated = r.e.now()
	holds := r.changed
	b, err := json.Marshal(r.rec)
	row := rowOf(r.rec, b)
	r.mu.Unlock()
	if err == nil {
		err = r.e.store.PutJob(context.WithoutCancel(r.e.ctx), row)
	}
	r.mu.Lock()
	r.stored, r.storedErr = holds, err
	r.mu.Unlock()
	return err
}

// setState records the job's state. The new state is written to the
// store before anyone can see it (r.mu is held across the write): a reader
// that sees a job ended finds it ended in the catalog too.
func (r *Run) setState(state, errText string) {
	// After any write in flight (store), so an older snapshot cannot land
	// over this one.
	r.writing.Lock()
	defer r.writing.Unlock()
	now := r.e.now()
	r.mu.Lock()
	r.rec.State = state
	if state != api.JobWaiting {
		r.rec.Waiting = nil
	}
	if errText != "" {
		r.rec.Error = errText
	}
	r.rec.Updated = now
	b, err := json.Marshal(r.rec)
	if err == nil && !r.ephemeral {
		err = r.e.store.PutJob(context.WithoutCancel(r.e.ctx), rowOf(r.rec, b))
	}
	r.changed++
	r.stored, r.storedErr = r.changed, err
	r.mu.Unlock()
	if err != nil {
		r.e.log.Error("persisting job failed", "job", r.rec.ID, "err", err)
	}
	r.e.notify(r.snapshot())
}

func (r *Run) setStep(i int, state string, err error) {
	r.mu.Lock()
	st := &r.rec.Steps[i]
	st.State = state
	now := r.e.now()
	switch state {
	case api.StepRunning:
		st.Started, st.Error = now, ""
	case api.StepSucceeded, api.StepSkipped:
		st.Ended = now
		if state == api.StepSucceeded {
			st.Progress = 1
		}
	case api.StepFailed:
		st.Ended = now
		if err != nil {
			st.Error = err.Error()
		}
	}
	r.mu.Unlock()
	r.persist()
}

// run executes the job's remaining steps.
func (r *Run) run(ctx context.Context) {
	k := r.e.kinds[r.rec.Kind]
	log := r.e.log.With("job", r.rec.ID, "kind", r.rec.Kind)
	r.setState(api.JobRunning, "")
	final := func(state, errText string) {
		k.Finish(context.WithoutCancel(ctx), r, state)
		if err := r.e.store.UnlockMachines(context.WithoutCancel(ctx), r.rec.ID); err != nil {
			log.Error("unlocking machines failed", "err", err)
		}
		r.setState(state, errText)
		log.Info("job ended", "state", state, "err", errText)
	}
	if r.rec.RollingBack {
		r.cancel(ctx, k, len(r.rec.Steps), final) // a restart interrupted it
		return
	}
	for i := range r.rec.Steps {
		if s := r.rec.Steps[i].State; s == api.StepSucceeded || s == api.StepSkipped {
			continue
		}
		if ctx.Err() != nil {
			return // controller shutting down: resumed at next start
		}
		name := r.rec.Steps[i].Name
		if h := r.e.hooks.BeforeStep; h != nil {
			if err := h(ctx, r.rec.ID, name); err != nil {
				if ctx.Err() != nil {
					return
				}
				r.failStep(i, err, final)
				return
			}
		}
		if r.beginStep(i) {
			r.cancel(ctx, k, i, final)
			return
		}
		r.e.failpoint(FailStepRunning)
		log.Info("step", "step", name)
		for attempt := 0; ; attempt++ {
			err := k.Run(ctx, r, name)
			if ctx.Err() != nil {
				return // shutting down mid-step: the step reruns after restart
			}
			if err == nil {
				r.setStep(i, api.StepSucceeded, nil)
				r.e.failpoint(FailStepDone)
				break
			}
			if errors.Is(err, ErrSkip) {
				r.setStep(i, api.StepSkipped, nil)
				r.e.failpoint(FailStepDone)
				break
			}
			if r.CancelRequested() {
				r.setStep(i, api.StepFailed, fmt.Errorf("cancelled: %w", err))
				r.cancel(ctx, k, i+1, final)
				return
			}
			if IsRetryable(err) && r.e.now().Before(r.rec.Deadline) && !r.CancelRequested() {
				wait := min(time.Duration(1<<min(attempt, 5))*time.Second, 30*time.Second)
				r.Note("attempt %d failed (%v); retrying in %s", attempt+1, err, wait)
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				continue
			}
			r.failStep(i, err, final)
			return
		}
	}
	state := api.JobSucceeded
	var failed, ok int
	for _, m := range r.snapshot().Machines {
		if m.Error != "" {
			failed++
		} else {
			ok++
		}
	}
	switch {
	case failed > 0 && ok > 0:
		state = api.JobPartial
	case failed > 0:
		state = api.JobFailed
	}
	final(state, "")
}

// failStep records step i failed, skips the rest and ends the job failed.
func (r *Run) failStep(i int, err error, final func(string, string)) {
	r.setStep(i, api.StepFailed, err)
	for j := i + 1; j < len(r.rec.Steps); j++ {
		r.setStep(j, api.StepSkipped, nil)
	}
	final(api.JobFailed, fmt.Sprintf("%s: %v", r.rec.Steps[i].Name, err))
}

// cancel rolls back and ends the job as cancelled.
func (r *Run) cancel(ctx context.Context, k Kind, at int, final func(string, string)) {
	r.mu.Lock()
	// Notes made during the rollback go to the last step that ran (at-1:
	// at is the first step not run).
	r.step = max(0, min(at-1, len(r.rec.Steps)-1))
	r.rec.RollingBack = true
	r.mu.Unlock()
	for j := at; j < len(r.rec.Steps); j++ {
		r.setStep(j, api.StepSkipped, nil)
	}
	if err := r.persist(); err != nil {
		final(api.JobFailed, fmt.Sprintf("cancelled, but recording the rollback failed: %v", err))
		return
	}
	r.e.failpoint(FailRollingBack)
	if ctx.Err() != nil {
		return // shutting down: the rollback runs after restart
	}
	// A rollback retries what a retry can fix (an agent still
	// reconnecting after a restart) until the job's deadline, and for at
	// least RollbackRetry: a job cancelled near its deadline is rolled
	// back all the same.
	until := r.e.now().Add(RollbackRetry)
	if d := r.Deadline(); d.After(until) {
		until = d
	}
	for attempt := 0; ; attempt++ {
		err := k.Rollback(ctx, r)
		if ctx.Err() != nil {
			return // shutting down mid-rollback: it reruns after restart
		}
		if err == nil {
			break
		}
		if !IsRetryable(err) || !r.e.now().Before(until) {
			final(api.JobFailed, fmt.Sprintf("cancelled, but the rollback failed: %v", err))
			return
		}
		wait := min(time.Duration(1<<min(attempt, 5))*time.Second, 30*time.Second)
		r.Note("rollback attempt %d failed (%v); retrying in %s", attempt+1, err, wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	final(api.JobCancelled, "cancelled by request; the target was rolled back")
}

// RollbackRetry is how long at least a cancelled job's rollback retries
// retryable errors, even past the job's deadline.
const RollbackRetry = 10 * time.Minute

func rowOf(rec *record, data []byte) catalog.JobRow {
	return catalog.JobRow{ID: rec.ID, Kind: rec.Kind, State: rec.State, Data: string(data), Created: rec.Created, Updated: rec.Updated}
}
