package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestExecDriver(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	d := &Exec{
		Commands: Commands{
			Start:  "echo running > " + state,
			Stop:   "echo stopped > " + state,
			Status: "echo checking >&2; cat " + state,
		},
		Env: map[string]string{"FERRY_MACHINE": "web1"},
	}
	ctx := context.Background()
	_, err := d.Run(ctx, ActionStart)
	require.NoError(t, err)
	s, err := d.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, StatusRunning, s)
	_, err = d.Run(ctx, ActionStop)
	require.NoError(t, err)
	s, err = d.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, StatusStopped, s)

	_, err = d.Run(ctx, ActionPause)
	require.ErrorIs(t, err, ErrNotConfigured)
	require.False(t, d.Has(ActionPause))

	require.NoError(t, os.WriteFile(state, []byte("confused\n"), 0o644))
	_, err = d.Status(ctx)
	var ce *CommandError
	require.ErrorAs(t, err, &ce)
	require.Contains(t, ce.Error(), "confused")
}

func TestEnvAndFailure(t *testing.T) {
	out, err := RunShell(context.Background(), `test "$FERRY_MACHINE" = web1 && echo ok-$FERRY_MACHINE`, map[string]string{"FERRY_MACHINE": "web1"}, time.Minute, "check")
	require.NoError(t, err)
	require.Equal(t, "ok-web1\n", out)
	_, err = RunShell(context.Background(), "echo nope; exit 3", nil, time.Minute, "check")
	var ce *CommandError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "nope\n", ce.Output)
}

func TestTimeoutKillsProcessGroup(t *testing.T) {
	start := time.Now()
	_, err := RunShell(context.Background(), "sleep 30 & sleep 30; echo never", nil, 300*time.Millisecond, "slow")
	require.Error(t, err)
	var ce *CommandError
	require.ErrorAs(t, err, &ce)
	require.Less(t, time.Since(start), 10*time.Second, "the timeout must stop the command and its children")
	require.False(t, errors.Is(err, ErrNotConfigured))
}
