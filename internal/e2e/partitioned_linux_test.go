package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/internal/testenv"
)

// TestTrackedFreezeOfAPartitionedDisk protects a whole loop device with a
// partition table (two partitions: ext4 mounted on the first, the second
// unused) with --track-writes. The disk's tracker sees the partition's
// writes, the freeze goes through the partition's filesystem, and every
// tracked-freeze point, exported, attached with its partitions, mounted
// (journal replayed) and checked with fsck.ext4, holds steps 1..N of the
// writer's log, N growing.
func TestTrackedFreezeOfAPartitionedDisk(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tool := range []string{"sfdisk", "partx", "fsck.ext4", "fsfreeze"} {
		testenv.RequireTool(t, tool)
	}
	dev := testenv.LoopDevice(t, 256<<20)
	cmd := exec.Command("sfdisk", "-q", dev)
	cmd.Stdin = strings.NewReader("label: gpt\n,128M\n,64M\n")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	if _, err := os.Stat(dev + "p1"); err != nil {
		testenv.Run(t, "partx", "-u", dev)
	}
	require.Eventually(t, func() bool { _, err := os.Stat(dev + "p1"); return err == nil }, 5*time.Second, 50*time.Millisecond)
	t.Cleanup(func() { bdtrack.RemovePinned(dev, bdtrack.Options{}) })
	mnt := testenv.MountExt4(t, dev+"p1")
	w := startFSWriter(t, 2*time.Millisecond, mnt)

	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src", "--track-writes")
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "pm1", "--agent", "src", "--disk", "root="+dev, "--policy", "fast")
	first := c.WaitPoint("pm1", 0, 120*time.Second)
	pts := pointsDuring(t, c, "pm1", first.ID, 8, 120*time.Second)
	w.Stop()
	total, stall, err := w.state()
	require.NoError(t, err)
	t.Logf("writer made %d steps, longest %s", total, stall)

	frozen := pointsMadeBy(src.Proc.Output(), "tracked-freeze")
	checked, last := checkPointPrefixes(t, c, "pm1", pts, frozen, false, total, func(dir string) int {
		return checkExportedPartition(t, filepath.Join(dir, "root.raw"))
	})
	require.GreaterOrEqual(t, checked, 5, "points under writes must come from tracked freezes: %s", src.Proc.Output())
	require.Positive(t, last, "no point holds a step")
}

// checkExportedPartition attaches an exported disk with its partitions,
// mounts the first (ext4 replays its journal), checks the writer's files,
// and runs fsck.ext4 -n on it after the unmount.
func checkExportedPartition(t *testing.T, img string) int {
	t.Helper()
	dev := strings.TrimSpace(testenv.Run(t, "losetup", "-f", "--show", img))
	defer func() {
		exec.Command("partx", "-d", dev).Run()
		exec.Command("losetup", "-d", dev).Run()
	}()
	// losetup -P's own scan finds nothing here (no udev, and the kernel's
	// scan of a loop device came back empty in this sandbox): partx adds
	// the partitions through BLKPG.
	testenv.Run(t, "partx", "-a", dev)
	part := dev + "p1"
	require.Eventually(t, func() bool { _, err := os.Stat(part); return err == nil }, 5*time.Second, 50*time.Millisecond)
	mnt := t.TempDir()
	testenv.Run(t, "mount", "-t", "ext4", part, mnt)
	mounted := true
	defer func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	}()
	n := checkFSPrefix(t, mnt)
	testenv.Run(t, "umount", mnt)
	mounted = false
	testenv.Run(t, "fsck.ext4", "-n", "-f", part)
	return n
}
