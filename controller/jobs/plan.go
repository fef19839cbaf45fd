package jobs

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

// MachineStep records one of a machine's own steps (jobs whose machines
// move in parallel, each through its own steps): running stamps its
// start, an end state its end and error.
func (r *Run) MachineStep(machine, step, state string, err error) {
	now := r.e.now()
	r.mu.Lock()
	for i := range r.rec.Machines {
		m := &r.rec.Machines[i]
		if m.Name != machine {
			continue
		}
		k := slices.IndexFunc(m.Steps, func(s api.JobStep) bool { return s.Name == step })
		if k < 0 {
			m.Steps = append(m.Steps, api.JobStep{Name: step})
			k = len(m.Steps) - 1
		}
		s := &m.Steps[k]
		s.State = state
		switch state {
		case api.StepRunning:
			s.Started, s.Ended, s.Error = now, time.Time{}, ""
		case api.StepSucceeded, api.StepSkipped, api.StepFailed:
			s.Ended = now
			if state == api.StepSucceeded {
				s.Progress = 1
			}
			if err != nil {
				s.Error = err.Error()
			}
		}
	}
	r.mu.Unlock()
	r.persistSoon()
}

// SetAction records a plan action as it runs (keyed by group, phase and
// index: a rerun replaces the record).
func (r *Run) SetAction(a api.JobAction) {
	r.mu.Lock()
	k := slices.IndexFunc(r.rec.Actions, func(x api.JobAction) bool {
		return x.Group == a.Group && x.Phase == a.Phase && x.Index == a.Index
	})
	if k < 0 {
		r.rec.Actions = append(r.rec.Actions, a)
	} else {
		r.rec.Actions[k] = a
	}
	r.mu.Unlock()
	r.persist()
}

// Actions returns the plan actions recorded so far.
func (r *Run) Actions() []api.JobAction {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]api.JobAction(nil), r.rec.Actions...)
}

// ErrWaitCancelled ends a wait on a manual action when the job is
// cancelled: the step fails and the engine rolls the job back.
var ErrWaitCancelled = errors.New("cancelled while waiting for a manual action")

// WaitManual puts the job in state waiting, showing text, until `ferry
// jobs resume` (Engine.Continue) confirms the action named key, or the
// job is cancelled, or ctx ends (a controller stopping: the job waits
// again after the restart unless the confirmation was recorded). An
// action confirmed before returns at once.
func (r *Run) WaitManual(ctx context.Context, key, step, text string) error {
	if r.ephemeral {
		return nil // a dry run lists manual actions, never waits
	}
	r.mu.Lock()
	if slices.Contains(r.rec.Resumed, key) {
		r.mu.Unlock()
		return nil
	}
	if r.rec.CancelReq {
		r.mu.Unlock()
		return ErrWaitCancelled
	}
	r.waitKey = key
	r.rec.Waiting = &api.JobWait{Step: step, Text: text, Since: r.e.now()}
	r.mu.Unlock()
	r.setState(api.JobWaiting, "")
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.wake:
		}
		r.mu.Lock()
		resumed, cancelled := slices.Contains(r.rec.Resumed, key), r.rec.CancelReq
		r.mu.Unlock()
		switch {
		case resumed:
			return nil
		case cancelled:
			r.mu.Lock()
			r.rec.Waiting = nil
			r.mu.Unlock()
			r.setState(api.JobRunning, "")
			return ErrWaitCancelled
		}
	}
}

func (r *Run) wakeUp() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}
