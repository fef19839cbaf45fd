package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
)

type retryable struct{ error }

func (retryable) Retryable() bool { return true }

// testKind runs steps a, b, c; behaviour is scripted per step.
type testKind struct {
	mu       sync.Mutex
	calls    []string
	fail     map[string][]error // errors to return, in order, before succeeding
	block    chan struct{}      // if set, step blockStep (default b) waits on it
	rolled   bool
	finished int

	blockStep    string
	rollbackNote bool          // Rollback writes a note
	rollbackWait chan struct{} // if set, Rollback waits on it (or its context)
	rollbacks    int
}

func (k *testKind) Steps(json.RawMessage) ([]string, error) { return []string{"a", "b", "c"}, nil }

func (k *testKind) Run(ctx context.Context, r *Run, step string) error {
	k.mu.Lock()
	k.calls = append(k.calls, step)
	var err error
	if errs := k.fail[step]; len(errs) > 0 {
		err, k.fail[step] = errs[0], errs[1:]
	}
	block := k.block
	k.mu.Unlock()
	bs := k.blockStep
	if bs == "" {
		bs = "b"
	}
	if step == bs && block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if step == "c" && err == nil {
		r.SetMachine("m1", "done", 7, nil)
		r.Progress(10, 10)
	}
	return err
}

func (k *testKind) Rollback(ctx context.Context, r *Run) error {
	k.mu.Lock()
	k.rollbacks++
	wait := k.rollbackWait
	k.mu.Unlock()
	if k.rollbackNote {
		r.Note("rolling back")
	}
	if wait != nil {
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	k.mu.Lock()
	k.rolled = true
	k.mu.Unlock()
	return nil
}
func (k *testKind) Finish(context.Context, *Run, string) { k.mu.Lock(); k.finished++; k.mu.Unlock() }

func (k *testKind) Calls() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.calls...)
}

func openCatalog(t *testing.T, path string) *catalog.Catalog {
	t.Helper()
	c, err := catalog.Open(context.Background(), path, nil)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func waitEnd(t *testing.T, e *Engine, id string) api.Job {
	t.Helper()
	var j api.Job
	require.Eventually(t, func() bool {
		var err error
		j, err = e.Get(context.Background(), id)
		require.NoError(t, err)
		return api.Terminal(j.State)
	}, 30*time.Second, 10*time.Millisecond)
	return j
}

func TestStepsRunInOrderAndPersist(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	k := &testKind{fail: map[string][]error{"b": {retryable{errors.New("agent away")}}}}
	e := New(cat, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(context.Background()))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, map[string]int{"x": 1}, time.Minute)
	require.NoError(t, err)

	_, err = e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	var ae *api.Error
	require.ErrorAs(t, err, &ae, "a second job on the machine is refused")
	require.Equal(t, api.CodeBusy, ae.Code)
	require.Contains(t, ae.Message, j.ID, "the refusal names the running job")

	j = waitEnd(t, e, j.ID)
	require.Equal(t, api.JobSucceeded, j.State)
	require.Equal(t, []string{"a", "b", "b", "c"}, k.Calls(), "a retryable failure is retried")
	require.Equal(t, int64(7), j.Machines[0].PointID)
	require.Contains(t, j.Steps[1].Note, "retrying")
	for _, s := range j.Steps {
		require.Equal(t, api.StepSucceeded, s.State)
	}
	row, err := cat.Job(context.Background(), j.ID)
	require.NoError(t, err)
	require.Equal(t, api.JobSucceeded, row.State)
	id, err := cat.MachineJob(context.Background(), "m1")
	require.NoError(t, err)
	require.Empty(t, id, "the machine is released")
	require.Equal(t, 1, k.finished)
}

func TestFailureSkipsTheRest(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	k := &testKind{fail: map[string][]error{"b": {errors.New("disk on fire")}}}
	e := New(cat, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(context.Background()))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	j = waitEnd(t, e, j.ID)
	require.Equal(t, api.JobFailed, j.State)
	require.Contains(t, j.Error, "disk on fire")
	require.Equal(t, []string{api.StepSucceeded, api.StepFailed, api.StepSkipped}, []string{j.Steps[0].State, j.Steps[1].State, j.Steps[2].State})
}

// TestResumeAfterRestart: the engine stops mid-step (controller killed);
// a new engine on the same catalog resumes from that step.
func TestResumeAfterRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	cat := openCatalog(t, path)
	k := &testKind{block: make(chan struct{})}
	ctx, stop := context.WithCancel(context.Background())
	e := New(cat, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(ctx))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(k.Calls()) == 2 }, 10*time.Second, 5*time.Millisecond)
	stop()
	e.Wait()

	k2 := &testKind{}
	e2 := New(cat, map[string]Kind{"k": k2}, nil, nil)
	require.NoError(t, e2.Resume(context.Background()))
	j = waitEnd(t, e2, j.ID)
	require.Equal(t, api.JobSucceeded, j.State)
	require.Equal(t, []string{"b", "c"}, k2.Calls(), "resumed from the step that was running")
	require.Contains(t, j.Notes[len(j.Notes)-1], "resumed")
}

func TestCancelRollsBackAtAStepBoundary(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	k := &testKind{block: make(chan struct{})}
	e := New(cat, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(context.Background()))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	w, err := e.Watch(context.Background(), j.ID)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(k.Calls()) == 2 }, 10*time.Second, 5*time.Millisecond)
	_, err = e.Cancel(context.Background(), j.ID)
	require.NoError(t, err)
	close(k.block) // step b finishes; c must not run
	var last api.Job
	for s := range w {
		last = s
	}
	require.Equal(t, api.JobCancelled, last.State)
	require.Equal(t, []string{"a", "b"}, k.Calls())
	require.True(t, k.rolled)
	_, err = e.Cancel(context.Background(), j.ID)
	require.Error(t, err, "a finished job cannot be cancelled")
}

// TestCancelDuringAStepThatFails: a cancel arrives while a step runs and
// that step then fails: the job rolls back (its rollback may write notes)
// and ends cancelled — the controller does not panic. (A cancel during
// the last step is refused: TestCancelDuringTheLastStepIsRefused.)
func TestCancelDuringAStepThatFails(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	k := &testKind{block: make(chan struct{}), blockStep: "b", rollbackNote: true,
		fail: map[string][]error{"b": {errors.New("driver refused")}}}
	e := New(cat, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(context.Background()))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(k.Calls()) == 2 }, 10*time.Second, 5*time.Millisecond)
	_, err = e.Cancel(context.Background(), j.ID)
	require.NoError(t, err)
	close(k.block)
	j = waitEnd(t, e, j.ID)
	require.Equal(t, api.JobCancelled, j.State)
	require.True(t, k.rolled)
	require.Equal(t, api.StepFailed, j.Steps[1].State)
	require.Contains(t, j.Steps[1].Note, "rolling back")
	require.Equal(t, api.StepSkipped, j.Steps[2].State)
}

// TestRollbackResumesAfterRestart: the controller stops during a cancelled
// job's rollback; after the restart the rollback runs again and the job
// ends cancelled, not succeeded.
func TestRollbackResumesAfterRestart(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	k := &testKind{block: make(chan struct{}), rollbackWait: make(chan struct{})}
	ctx, stop := context.WithCancel(context.Background())
	e := New(cat, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(ctx))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(k.Calls()) == 2 }, 10*time.Second, 5*time.Millisecond)
	_, err = e.Cancel(context.Background(), j.ID)
	require.NoError(t, err)
	close(k.block) // b ends; the boundary starts the rollback, which waits
	require.Eventually(t, func() bool { k.mu.Lock(); defer k.mu.Unlock(); return k.rollbacks == 1 }, 10*time.Second, 5*time.Millisecond)
	stop()
	e.Wait()
	require.False(t, k.rolled)

	k2 := &testKind{}
	e2 := New(cat, map[string]Kind{"k": k2}, nil, nil)
	require.NoError(t, e2.Resume(context.Background()))
	j = waitEnd(t, e2, j.ID)
	require.Equal(t, api.JobCancelled, j.State)
	require.True(t, k2.rolled, "the rollback ran to its end after the restart")
	require.Empty(t, k2.Calls(), "no step ran after the cancel")
}

// TestWatcherAlwaysGetsTheEnd: a watcher that reads nothing while the job
// makes many updates still receives the terminal snapshot.
func TestWatcherAlwaysGetsTheEnd(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	k := &testKind{block: make(chan struct{})}
	e := New(cat, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(context.Background()))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	w, err := e.Watch(context.Background(), j.ID)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(k.Calls()) == 2 }, 10*time.Second, 5*time.Millisecond)
	e.mu.Lock()
	r := e.active[j.ID]
	e.mu.Unlock()
	for i := 0; i < 100; i++ {
		r.MachineNote("m1", "filler") // fills the watcher's buffer
	}
	close(k.block)
	waitEnd(t, e, j.ID)
	var last api.Job
	for s := range w {
		last = s
	}
	require.Equal(t, api.JobSucceeded, last.State)
}
