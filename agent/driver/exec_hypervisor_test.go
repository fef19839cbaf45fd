package driver

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestExecHypervisor: the exec adapter runs the same shell commands with the
// spec's FERRY_* environment; an unconfigured action is invalid, a failing
// command unclassified (not retried); Remove runs stop, or nothing.
func TestExecHypervisor(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("sh commands")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "started")
	h := &ExecHypervisor{Commands: Commands{
		Start:  `printf %s "$FERRY_MACHINE" > ` + out,
		Status: `echo running`,
		Stop:   `exit 3`,
	}}
	spec := Spec{Name: "m", Env: map[string]string{"FERRY_MACHINE": "web"}}
	ctx := context.Background()
	require.NoError(t, h.Start(ctx, spec))
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, "web", string(b))
	st, err := h.Status(ctx, spec)
	require.NoError(t, err)
	require.Equal(t, StatusRunning, st)
	err = h.Pause(ctx, spec)
	require.Equal(t, KindInvalid, KindOf(err))
	require.ErrorIs(t, err, ErrNotConfigured)
	err = h.Stop(ctx, spec)
	var ce *CommandError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, KindUnknown, KindOf(err))
	require.Error(t, h.Remove(ctx, spec), "remove runs stop")
	require.NoError(t, (&ExecHypervisor{}).Remove(ctx, spec), "no stop command: nothing to remove")
}
