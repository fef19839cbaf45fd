package e2e

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/internal/testenv"
)

// TestDriverPauseOfAnUnmountedBlockDevice: a block device with no
// filesystem mounted from it (a VM's raw disk) cannot be frozen, but its
// machine's source driver can pause the machine. With --track-writes the
// agent tracks the device and makes each point by pausing the machine
// (here a writer of logged, synced 4 KiB writes that stops between two
// writes when asked, as `virsh suspend` stops a VM), reading the blocks
// the tracker saw change, and resuming it. Every such point is
// crash-consistent and equals the device's first content plus exactly
// the first N logged writes, N growing; and no capture met a write (the
// agent checks, still paused, that nothing wrote to the device).
func TestDriverPauseOfAnUnmountedBlockDevice(t *testing.T) {
	testenv.RequireRoot(t)
	const size = 64 << 20
	const seed = 41
	dev := testenv.LoopDevice(t, size)
	t.Cleanup(func() { bdtrack.RemovePinned(dev, bdtrack.Options{}) })
	initial := makeImage(t, t.TempDir()+"/initial.img", seed, size)
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(initial, 0)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())

	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src", "--track-writes")
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	w, pause, resume := StartPausableDeviceWriter(t, []string{dev}, size, seed, 0)
	c.MustFerry("protect", "vm", "--agent", "src", "--disk", "root="+dev, "--policy", "fast",
		"--pause", pause, "--resume", resume)
	first := c.WaitPoint("vm", 0, 120*time.Second)
	pts := pointsDuring(t, c, "vm", first.ID, 6, 120*time.Second)
	w.Stop()
	require.NoError(t, w.Err)
	log := w.Log()
	paused := pointsMadeBy(src.Proc.Output(), "driver-pause+tracked")
	checked, last := checkPointPrefixes(t, c, "vm", pts, paused, false, len(log), func(dir string) int {
		return PrefixLength(t, dir, []string{"root"}, [][]byte{initial}, log, seed)
	})
	require.GreaterOrEqual(t, checked, 4, "points under writes must come from the driver's pause: %s", src.Proc.Output())
	// The writer never stops on its own: a capture that met one of its
	// writes (the pause did not hold) is dropped, and says so.
	require.NotContains(t, src.Proc.Output(), "was written while its filesystems were frozen")
	require.Positive(t, last)
}
