package agent

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/protocol/msg"
)

// partitionedLoop makes a loop device with two 48 MiB partitions and
// returns the disk and its partitions' device paths.
func partitionedLoop(t *testing.T) (whole, p1, p2 string) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "sfdisk")
	testenv.RequireTool(t, "partx")
	whole = testenv.LoopDevice(t, 128<<20)
	cmd := exec.Command("sfdisk", "-q", whole)
	cmd.Stdin = strings.NewReader("label: dos\n,48M\n,48M\n")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	p1, p2 = whole+"p1", whole+"p2"
	if _, err := os.Stat(p2); err != nil {
		testenv.Run(t, "partx", "-u", whole)
	}
	require.Eventually(t, func() bool {
		_, e1 := os.Stat(p1)
		_, e2 := os.Stat(p2)
		return e1 == nil && e2 == nil
	}, 5*time.Second, 50*time.Millisecond)
	return whole, p1, p2
}

// A partitioned disk is tracked as a whole and frozen through the
// filesystems mounted from its partitions; the freeze then proves that
// nothing wrote to the disk while they were frozen. A writer of the
// unmounted partition makes the capture unusable, with the reason.
func TestPartitionedDiskIsFrozenThroughItsPartitions(t *testing.T) {
	whole, p1, p2 := partitionedLoop(t)
	mnt := testenv.MountExt4(t, p1)
	t.Cleanup(func() { bdtrack.RemovePinned(whole, bdtrack.Options{}) })
	cfg := Config{StateDir: t.TempDir(), MaxFreeze: 2 * time.Second}
	require.NoError(t, cfg.Validate())
	a := &Agent{cfg: cfg, log: slog.New(slog.DiscardHandler)}
	mc := msg.MachineConfig{Name: "m", Disks: []msg.DiskConfig{{Name: "root", Path: whole, BlockSize: 65536}}}

	disks, mounts, why := a.trackable(mc)
	require.Empty(t, why)
	require.Equal(t, []string{mnt}, mounts, "the mounted partition's filesystem is frozen")

	// The agent's state on a partition's filesystem is refused, naming it.
	require.NoError(t, os.Mkdir(filepath.Join(mnt, "state"), 0o700))
	other := &Agent{cfg: Config{StateDir: filepath.Join(mnt, "state")}, log: a.log}
	_, _, why = other.trackable(mc)
	require.Equal(t, fmt.Sprintf("%s: partition %s: the agent's state directory is on the disks' filesystem, which the agent freezes only when --freeze-own-fs lists its mount point (%s)", whole, filepath.Base(p1), mnt), why)

	d := disks[0]
	var err error
	d.t, err = d.start()
	require.NoError(t, err)
	t.Cleanup(func() { d.t.Close() })
	_, err = d.t.Cut()
	require.NoError(t, err)
	d.t.Commit(1)

	// Writes through the partition's filesystem are the disk's: they are
	// captured, and the capture is used.
	for i := range 20 {
		require.NoError(t, os.WriteFile(filepath.Join(mnt, fmt.Sprint("f", i)), []byte(strings.Repeat("x", 8192)), 0o600))
	}
	for range 3 {
		fz := a.freezeAndCapture(mc, disks, mounts, nil)
		require.NoError(t, fz.err)
		require.Empty(t, fz.why)
		require.NotNil(t, fz.caps)
		require.Positive(t, fz.caps[0].bytes(), "the partition's writes were not seen on the disk")
	}

	// A writer of the partition that no freeze stops.
	raw, err := os.OpenFile(p2, os.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC, 0)
	require.NoError(t, err)
	defer raw.Close()
	var stop atomic.Bool
	done := make(chan error, 1)
	go func() {
		// An anonymous mapping is page-aligned, as O_DIRECT wants.
		buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		if err != nil {
			done <- err
			return
		}
		defer unix.Munmap(buf)
		for i := int64(0); !stop.Load(); i = (i + 1) % 1024 {
			if _, err := raw.WriteAt(buf, i*4096); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	caught := ""
	for i := 0; i < 50 && caught == ""; i++ {
		fz := a.freezeAndCapture(mc, disks, mounts, nil)
		require.NoError(t, fz.err)
		if fz.caps == nil {
			caught = fz.why
		}
	}
	stop.Store(true)
	require.NoError(t, <-done)
	require.Contains(t, caught, whole+" was written while its filesystems were frozen")
}

// Stacked devices (device-mapper, md) are refused by what sysfs says of
// them. Neither can be made on the test machines (no device-mapper or
// md in the kernel), so the rule is checked on a tree laid out as sysfs
// lays them out, and on a real loop device, which is not stacked.
func TestStackedDevicesAreNotTracked(t *testing.T) {
	root := t.TempDir()
	mk := func(dev string, parts ...string) {
		require.NoError(t, os.MkdirAll(filepath.Join(append([]string{root, dev}, parts...)...), 0o755))
	}
	mk("253:0", "dm")
	mk("9:0", "md")
	mk("254:3", "slaves", "sda")
	mk("8:0", "slaves")
	require.Contains(t, stackedDevice(root, 253, 0), "a device-mapper (LVM, dm-crypt) device")
	require.Contains(t, stackedDevice(root, 9, 0), "a md (software RAID) device")
	require.Contains(t, stackedDevice(root, 254, 3), "a device stacked on 1 others")
	require.Empty(t, stackedDevice(root, 8, 0))

	testenv.RequireRoot(t)
	dev := testenv.LoopDevice(t, 16<<20)
	var st unix.Stat_t
	require.NoError(t, unix.Stat(dev, &st))
	require.Empty(t, stackedDevice(sysBlock, unix.Major(st.Rdev), unix.Minor(st.Rdev)))
}
