package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/internal/testenv"
)

// An agent killed inside a freeze leaves its filesystem frozen: the next
// start thaws it, and only the one written down.
func TestStartThawsWhatAKilledRunLeftFrozen(t *testing.T) {
	testenv.RequireRoot(t)
	mnt := testenv.MountLoop(t, "xfs", 300<<20)
	state := t.TempDir()
	require.NoError(t, snapshot.Freeze(mnt))
	t.Cleanup(func() { snapshot.Thaw(mnt) })
	require.NoError(t, os.WriteFile(filepath.Join(state, freezingFile), []byte(mnt), 0o600))

	// While frozen, a write waits.
	wrote := make(chan error, 1)
	go func() { wrote <- os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o600) }()
	select {
	case err := <-wrote:
		t.Fatalf("a write to a frozen filesystem returned: %v", err)
	case <-time.After(300 * time.Millisecond):
	}

	a := &Agent{cfg: Config{StateDir: state}, log: slog.New(slog.DiscardHandler)}
	a.thawLeftFrozen()
	select {
	case err := <-wrote:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the filesystem is still frozen after the start")
	}
	_, err := os.Stat(filepath.Join(state, freezingFile))
	require.ErrorIs(t, err, os.ErrNotExist)
}
