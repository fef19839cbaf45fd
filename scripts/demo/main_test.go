package main

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/e2e"
	"github.com/ferrydr/ferry/internal/testenv"
)

// TestDemoMakesNoInconsistentPoints runs the demo with a small image: its
// running machine's points, taken while it writes, are all reflink views
// of an image on the XFS filesystem the demo loop-mounts (the last ones
// powered-off), none inconsistent; and it leaves no mount and no loop
// device behind.
func TestDemoMakesNoInconsistentPoints(t *testing.T) {
	testenv.RequireRoot(t) // the demo loop-mounts XFS
	testenv.RequireTool(t, "mkfs.xfs")
	bin := e2e.Binaries(t)
	loopsBefore := loopDevices(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	points, err := run(ctx, options{bin: bin, size: 16 << 20})
	require.NoError(t, err)
	require.NotEmpty(t, points)
	reflinks := 0
	for _, p := range points {
		require.NotEqual(t, "inconsistent", p.Consistency, "point %d: %s: %s", p.ID, p.Method, p.Reason)
		require.Contains(t, []string{"reflink", "powered-off"}, p.Method, "point %d", p.ID)
		if p.Method == "reflink" {
			reflinks++
		}
	}
	require.Positive(t, reflinks, "the points taken while the machine ran are reflink views")

	mounts, err := os.ReadFile("/proc/self/mounts")
	require.NoError(t, err)
	require.NotContains(t, string(mounts), "ferry-demo-", "the demo's filesystem is unmounted")
	require.Equal(t, loopsBefore, loopDevices(t), "the demo's loop device is detached")
}

// TestDemoRefusesADirectoryWithoutReflink: -image-dir on a filesystem
// without reflink clones (ext4) would give inconsistent points: the demo
// refuses it before starting anything, and removes what it made there.
func TestDemoRefusesADirectoryWithoutReflink(t *testing.T) {
	dir := testenv.MountLoop(t, "ext4", 64<<20)
	bin := e2e.Binaries(t)
	_, err := run(context.Background(), options{bin: bin, size: 16 << 20, imageDir: dir})
	require.ErrorContains(t, err, "makes no reflink clone, so points of the running machine would be inconsistent")
	require.ErrorContains(t, err, "(ext4)")
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range ents {
		require.Equal(t, "lost+found", e.Name(), "the demo left %s in -image-dir", e.Name())
	}
}

// loopDevices lists the attached loop devices and their backing files.
func loopDevices(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("losetup", "-a").CombinedOutput()
	require.NoError(t, err, "%s", out)
	var demo []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "ferry-demo-") {
			demo = append(demo, l)
		}
	}
	return strings.Join(demo, "\n")
}
