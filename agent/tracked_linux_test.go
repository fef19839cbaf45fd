package agent

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/protocol/msg"
)

// An agent killed inside a freeze leaves its filesystems frozen: the
// next start thaws every one written down (a tracked freeze of block
// devices notes several, one a line).
func TestStartThawsWhatAKilledRunLeftFrozen(t *testing.T) {
	testenv.RequireRoot(t)
	mnts := []string{testenv.MountLoop(t, "xfs", 300<<20), testenv.MountExt4(t, testenv.LoopDevice(t, 64<<20))}
	state := t.TempDir()
	wrote := make(chan error, len(mnts))
	for _, mnt := range mnts {
		require.NoError(t, snapshot.Freeze(mnt))
		t.Cleanup(func() { snapshot.Thaw(mnt) })
		// While frozen, a write waits.
		go func() { wrote <- os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o600) }()
	}
	require.NoError(t, os.WriteFile(filepath.Join(state, freezingFile), []byte(strings.Join(mnts, "\n")), 0o600))
	select {
	case err := <-wrote:
		t.Fatalf("a write to a frozen filesystem returned: %v", err)
	case <-time.After(300 * time.Millisecond):
	}

	a := &Agent{cfg: Config{StateDir: state}, log: slog.New(slog.DiscardHandler)}
	a.thawLeftFrozen()
	for range mnts {
		select {
		case err := <-wrote:
			require.NoError(t, err)
		case <-time.After(5 * time.Second):
			t.Fatal("a filesystem is still frozen after the start")
		}
	}
	_, err := os.Stat(filepath.Join(state, freezingFile))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// trackable on real loop devices: a whole device with a mounted
// filesystem is tracked through that mount; a device with none, a
// partition, a device whose filesystem holds the agent's state or log,
// and a machine that mixes files and devices are not, each with its
// reason.
func TestTrackableBlockDevices(t *testing.T) {
	testenv.RequireRoot(t)
	mounted := testenv.LoopDevice(t, 64<<20)
	mnt := testenv.MountExt4(t, mounted)
	bare := testenv.LoopDevice(t, 64<<20)
	machine := func(paths ...string) msg.MachineConfig {
		cfg := msg.MachineConfig{Name: "m"}
		for i, p := range paths {
			cfg.Disks = append(cfg.Disks, msg.DiskConfig{Name: fmt.Sprint("d", i), Path: p, BlockSize: 65536})
		}
		return cfg
	}
	agentWith := func(c Config) *Agent { return &Agent{cfg: c, log: slog.New(slog.DiscardHandler)} }
	a := agentWith(Config{StateDir: t.TempDir()})

	disks, mounts, why := a.trackable(machine(mounted))
	require.Empty(t, why)
	require.Equal(t, []string{mnt}, mounts)
	require.Len(t, disks, 1)
	require.Equal(t, mounted, disks[0].path)

	_, _, why = a.trackable(machine(mounted, bare))
	require.Equal(t, bare+": no mounted filesystem to freeze, on it or its partitions (and no source driver to pause the machine)", why)

	require.NoError(t, os.MkdirAll(filepath.Join(mnt, "state"), 0o700))
	_, _, why = agentWith(Config{StateDir: filepath.Join(mnt, "state")}).trackable(machine(mounted))
	require.Contains(t, why, "state directory")
	_, _, why = agentWith(Config{StateDir: t.TempDir(), LogFile: filepath.Join(mnt, "agent.log")}).trackable(machine(mounted))
	require.Contains(t, why, "log")

	img := filepath.Join(t.TempDir(), "f.img")
	require.NoError(t, os.WriteFile(img, make([]byte, 1<<20), 0o600))
	_, _, why = a.trackable(machine(mounted, img))
	require.Contains(t, why, "is not a block device")

	t.Run("partition", func(t *testing.T) {
		testenv.RequireTool(t, "sfdisk")
		testenv.RequireTool(t, "partx")
		whole := testenv.LoopDevice(t, 64<<20)
		cmd := exec.Command("sfdisk", "-q", whole)
		cmd.Stdin = strings.NewReader("label: dos\n,32M\n")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		part := whole + "p1"
		if _, err := os.Stat(part); err != nil {
			// sfdisk's re-read may not have added it: losetup -f does not
			// scan partitions.
			testenv.Run(t, "partx", "-u", whole)
		}
		require.Eventually(t, func() bool { _, err := os.Stat(part); return err == nil }, 5*time.Second, 50*time.Millisecond)
		_, _, why := a.trackable(machine(part))
		require.Equal(t, part+" is a partition: block devices are tracked as whole disks (agent/bdtrack)", why)
	})
}

// Two machines frozen at once each keep their own note: one's thaw does
// not remove the other's, and a start after a kill reads them all (and
// a previous release's single note).
func TestFreezingNotesArePerMachine(t *testing.T) {
	state := t.TempDir()
	var logged strings.Builder
	a := &Agent{cfg: Config{StateDir: state}, log: slog.New(slog.NewTextHandler(&logged, nil))}
	require.NoError(t, a.noteFreezing("m/1", []string{"/nowhere/a"}))
	require.NoError(t, a.noteFreezing("m2", []string{"/nowhere/b"}))
	require.NoError(t, a.noteFreezing("m/1", nil))
	_, err := os.Stat(a.freezingNote("m2"))
	require.NoError(t, err, "one machine's thaw removed the other's note")
	require.NoError(t, os.WriteFile(filepath.Join(state, freezingFile), []byte("/nowhere/c"), 0o600))
	// A machine paused through its source driver for the freeze: its
	// next cycle must resume it.
	require.NoError(t, a.noteFreezing("vm 3", []string{pausedLine}))
	a.thawLeftFrozen()
	_, remembered := a.pausedLeft.Load("vm 3")
	require.True(t, remembered, "the paused machine is not remembered")
	_, remembered = a.pausedLeft.Load("m2")
	require.False(t, remembered)
	for _, m := range []string{"/nowhere/b", "/nowhere/c"} {
		require.Contains(t, logged.String(), "mount="+m)
	}
	require.NotContains(t, logged.String(), "/nowhere/a")
	left, err := filepath.Glob(filepath.Join(state, freezingFile+"*"))
	require.NoError(t, err)
	require.Empty(t, left)
}
