package jobs

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// TestCancelDuringTheLastStepIsRefused: while the last step runs there is
// no step boundary left, so a cancel could never roll back: it is refused
// with that reason (it used to be accepted, "will roll back", and the job
// then ended succeeded), and the job ends as its last step decides.
func TestCancelDuringTheLastStepIsRefused(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	k := &testKind{block: make(chan struct{}), blockStep: "c"}
	e := New(cat, map[string]Kind{"k": k}, nil, nil)
	require.NoError(t, e.Resume(context.Background()))
	j, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(k.Calls()) == 3 }, 10*time.Second, 5*time.Millisecond)

	require.Error(t, e.Cancellable(context.Background(), j.ID), "cancel is not offered during the last step")
	got, err := e.Cancel(context.Background(), j.ID)
	var ae *api.Error
	require.True(t, errors.As(err, &ae), "a refusal, not %v", err)
	require.Equal(t, api.CodeFailedPrecondition, ae.Code)
	require.Contains(t, ae.Message, "last step (c)")
	require.Contains(t, ae.Message, "can no longer be rolled back")
	require.False(t, got.CancelReq, "the refused cancel is not recorded")

	close(k.block)
	j = waitEnd(t, e, j.ID)
	require.Equal(t, api.JobSucceeded, j.State)
	require.False(t, k.rolled)
	require.False(t, j.CancelReq)

	_, err = e.Cancel(context.Background(), j.ID)
	require.True(t, errors.As(err, &ae))
	require.Equal(t, api.CodeFailedPrecondition, ae.Code, "a finished job cannot be cancelled")
	require.Error(t, e.Cancellable(context.Background(), j.ID), "cancel is not offered on a finished job")
}

// TestStartBeforeTheEngineRunsIsRefused: a job can only start once the
// engine runs (Resume), so none runs outside its lifetime or is resumed a
// second time.
func TestStartBeforeTheEngineRunsIsRefused(t *testing.T) {
	cat := openCatalog(t, filepath.Join(t.TempDir(), "c.db"))
	e := New(cat, map[string]Kind{"k": &testKind{}}, nil, nil)
	_, err := e.Start(context.Background(), "k", []string{"m1"}, nil, time.Minute)
	require.ErrorIs(t, err, ErrNotRunning)
	require.NoError(t, e.Resume(context.Background()))
	require.Error(t, e.Resume(context.Background()), "resuming twice would run every job twice")
}
