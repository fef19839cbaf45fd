package jobs

import (
	"context"
	"encoding/json"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// manualKind: step "wait" waits on a manual action, then "after" runs.
type manualKind struct{ afters atomic.Int32 }

func (k *manualKind) Steps(json.RawMessage) ([]string, error) { return []string{"wait", "after"}, nil }
func (k *manualKind) Run(ctx context.Context, r *Run, step string) error {
	if step == "wait" {
		r.MachineStep("m1", "check", api.StepRunning, nil)
		if err := r.WaitManual(ctx, "wait/0", step, "check the database"); err != nil {
			return err
		}
		r.MachineStep("m1", "check", api.StepSucceeded, nil)
		return nil
	}
	k.afters.Add(1)
	return nil
}
func (k *manualKind) Rollback(context.Context, *Run) error { return nil }
func (k *manualKind) Finish(context.Context, *Run, string) {}

func waitState(t *testing.T, e *Engine, id, state string) api.Job {
	t.Helper()
	var j api.Job
	require.Eventually(t, func() bool {
		var err error
		j, err = e.Get(context.Background(), id)
		require.NoError(t, err)
		return j.State == state
	}, 10*time.Second, 5*time.Millisecond, "job never %s", state)
	return j
}

// TestManualWaitSurvivesRestartAndResumes: a job waiting on a manual
// action is waiting in the catalog, waits again after a restart, refuses a
// resume of a job not waiting, and goes on after resume — once.
func TestManualWaitSurvivesRestartAndResumes(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	k := &manualKind{}
	ctx, stop := context.WithCancel(context.Background())
	e := New(cat, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(ctx))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	j = waitState(t, e, j.ID, api.JobWaiting)
	require.Equal(t, "check the database", j.Waiting.Text)
	require.Equal(t, api.StepRunning, j.Machines[0].Steps[0].State)
	row, err := cat.Job(context.Background(), j.ID)
	require.NoError(t, err)
	require.Equal(t, api.JobWaiting, row.State, "waiting is durable")
	stop()
	e.Wait()
	require.Zero(t, k.afters.Load())

	e2 := New(cat, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e2.Resume(context.Background()))
	j = waitState(t, e2, j.ID, api.JobWaiting)
	require.NotNil(t, j.Waiting, "the restarted job waits again")
	require.Zero(t, k.afters.Load())
	_, err = e2.Continue(context.Background(), j.ID)
	require.NoError(t, err)
	j = waitEnd(t, e2, j.ID)
	require.Equal(t, api.JobSucceeded, j.State)
	require.Nil(t, j.Waiting)
	require.Equal(t, int32(1), k.afters.Load())
	require.Equal(t, api.StepSucceeded, j.Machines[0].Steps[0].State)
	require.False(t, j.Machines[0].Steps[0].Ended.Before(j.Machines[0].Steps[0].Started))
	_, err = e2.Continue(context.Background(), j.ID)
	var ae *api.Error
	require.ErrorAs(t, err, &ae, "a job that ended cannot be resumed")
	require.Equal(t, api.CodeFailedPrecondition, ae.Code)
}

// TestCancelWhileWaiting: a cancel stops the wait and the job rolls back.
func TestCancelWhileWaiting(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	k := &manualKind{}
	e := New(cat, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(context.Background()))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	waitState(t, e, j.ID, api.JobWaiting)
	_, err = e.Cancel(context.Background(), j.ID)
	require.NoError(t, err)
	j = waitEnd(t, e, j.ID)
	require.Equal(t, api.JobCancelled, j.State)
	require.Zero(t, k.afters.Load())
}
