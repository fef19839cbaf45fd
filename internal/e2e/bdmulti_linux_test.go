package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/internal/testenv"
)

// multiDeviceFS is one filesystem the two-device test runs on: its
// device size and how the test makes and mounts it.
type multiDeviceFS struct {
	name  string
	size  int64
	tools []string // besides fsfreeze
	mount func(t testing.TB, dev string) string
}

var multiDeviceFSes = []multiDeviceFS{
	{name: "ext4", size: 256 << 20, tools: []string{"mkfs.ext4", "fsck.ext4"}, mount: testenv.MountExt4},
	// mkfs.xfs refuses a filesystem under 300 MB.
	{name: "xfs", size: 320 << 20, tools: []string{"mkfs.xfs", "xfs_repair"}, mount: testenv.MountXFS},
}

// TestTrackedFreezeOfTwoMountedBlockDevices protects one machine with two
// whole loop devices, each with a mounted filesystem (ext4, then XFS),
// with --track-writes. One writer makes fsynced steps whose one global
// sequence alternates between the two filesystems (new files, and blocks
// of one file per filesystem rewritten in place across rounds). Each
// tracked-freeze point, its two disks exported, mounted (the journal or
// log replayed) and checked read-only (fsck.ext4 -n -f, xfs_repair -n),
// shows steps 1..N across the two, N never shrinking and never past the
// steps made: the two disks show one instant. The agent freezes the two
// filesystems one after the other, but cuts the trackers only once both
// are frozen; a write on the second between the two freezes belongs to a
// step before any the first filesystem lacks, since the writer cannot go
// on past a step on the frozen first. Had the two been captured at
// different instants, the later one would hold a step whose predecessor
// the other lacks, and checkFSPrefix fails. No write waits longer than
// --max-freeze.
func TestTrackedFreezeOfTwoMountedBlockDevices(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "fsfreeze")
	for _, fs := range multiDeviceFSes {
		t.Run(fs.name, func(t *testing.T) { testTwoMountedBlockDevices(t, fs) })
	}
}

func testTwoMountedBlockDevices(t *testing.T, fs multiDeviceFS) {
	for _, tool := range fs.tools {
		testenv.RequireTool(t, tool)
	}
	const (
		maxFreeze = 3 * time.Second
		want      = 20 // tracked-freeze points
	)
	devs := []string{testenv.LoopDevice(t, fs.size), testenv.LoopDevice(t, fs.size)}
	mnts := make([]string, len(devs))
	for i, dev := range devs {
		// The agent leaves its trackers pinned (that is the point); the
		// test unpins them before the devices go.
		t.Cleanup(func() { bdtrack.RemovePinned(dev, bdtrack.Options{}) })
		mnts[i] = fs.mount(t, dev)
	}
	w := startFSWriter(t, 2*time.Millisecond, mnts...)

	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src", "--track-writes", "--max-freeze", maxFreeze.String())
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	machine := "pm-" + fs.name
	c.MustFerry("protect", machine, "--agent", "src", "--disk", "a="+devs[0], "--disk", "b="+devs[1], "--policy", "fast")
	// The first point's method comes from the agent's log: the
	// controller lists a point a moment before it records its method.
	var ids []int64
	var methods []string
	require.Eventually(t, func() bool {
		ids, methods = pointsInOrder(src.Proc.Output())
		return len(ids) > 0
	}, 120*time.Second, 100*time.Millisecond, "no point made")
	require.Equal(t, "direct-read", methods[0], "the first point (%d) cannot be tracked", ids[0])

	require.Eventually(t, func() bool {
		_, _, err := w.state()
		require.NoError(t, err, "the writer failed")
		return len(pointsMadeBy(src.Proc.Output(), "tracked-freeze")) >= want
	}, 150*time.Second, 200*time.Millisecond, "fewer than %d tracked-freeze points:\n%s", want, src.Proc.Output())
	w.Stop()
	// Stopped, the agent leaves the exports the machine's two cores.
	src.Proc.Stop()
	total, stall, err := w.state()
	require.NoError(t, err)
	t.Logf("writer made %d steps across the two filesystems, longest %s", total, stall)
	require.LessOrEqual(t, stall, maxFreeze, "a write waited longer than --max-freeze")
	out := src.Proc.Output()
	require.NotContains(t, out, "not tracking this machine")

	frozen := pointsMadeBy(out, "tracked-freeze")
	firstN, last, checked := -1, -1, 0
	for _, p := range c.Points(machine) {
		if !frozen[p.ID] {
			continue
		}
		require.Equal(t, "crash-consistent", p.Consistency, "point %d", p.ID)
		dir := c.Export(machine, p.ID)
		n := checkExported(t, fs.name, filepath.Join(dir, "a.raw"), filepath.Join(dir, "b.raw"))
		t.Logf("point %d (tracked freeze) = steps 1..%d", p.ID, n)
		require.GreaterOrEqual(t, n, last, "point %d shows fewer steps than the one before", p.ID)
		require.LessOrEqual(t, n, total, "point %d shows steps the writer never made", p.ID)
		if firstN < 0 {
			firstN = n
		}
		last = n
		checked++
		os.RemoveAll(dir)
	}
	require.GreaterOrEqual(t, checked, want, "points under writes must come from tracked freezes")
	require.Greater(t, last, firstN, "the %d points do not follow the writes: all show steps 1..%d", checked, last)
}
