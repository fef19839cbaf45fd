package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/internal/workload"
)

// makeImage writes a mixed image and returns its bytes.
func makeImage(t *testing.T, path string, seed uint64, size int64) []byte {
	t.Helper()
	require.NoError(t, workload.WriteImage(path, seed, size))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// pointsDuring collects the points of machine made after point `after`
// while the writer runs, until there are n of them.
func pointsDuring(t *testing.T, c *Controller, machine string, after int64, n int, timeout time.Duration) []Point {
	t.Helper()
	var got []Point
	require.Eventually(t, func() bool {
		got = got[:0]
		for _, p := range c.Points(machine) {
			if p.ID > after {
				got = append(got, p)
			}
		}
		return len(got) >= n
	}, timeout, 100*time.Millisecond, "fewer than %d points of %s", n, machine)
	return got
}

// TestPointsArePrefixesOfTheWriteLog: one 256 MiB image on an XFS loop
// mount, written during replication by one writer that logs every write
// in order: for at least 5 points, the export equals the initial image
// plus exactly the first N logged writes, and N grows from point to point.
func TestPointsArePrefixesOfTheWriteLog(t *testing.T) {
	mnt := testenv.MountLoop(t, "xfs", 1<<30)
	const size = 256 << 20
	img := filepath.Join(mnt, "disk.img")
	initial := makeImage(t, img, 11, size)

	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "src")
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "vm1", "--agent", "src", "--disk", "root="+img, "--policy", "fast")
	first := c.WaitPoint("vm1", 0, 120*time.Second)

	w := StartWriter(t, []string{img}, size, 5, 200*time.Microsecond)
	pts := pointsDuring(t, c, "vm1", first.ID, 5, 120*time.Second)
	w.Stop()
	require.NoError(t, w.Err)
	log := w.Log()
	t.Logf("writer made %d writes; checking %d points", len(log), len(pts))

	last := -1
	for _, p := range pts {
		require.Equal(t, "crash-consistent", p.Consistency, "a reflink clone of one image is crash-consistent")
		dir := c.Export("vm1", p.ID)
		n := PrefixLength(t, dir, []string{"root"}, [][]byte{initial}, log, 5)
		t.Logf("point %d = initial + first %d writes", p.ID, n)
		require.Greater(t, n, last, "N must grow from point to point")
		last = n
		os.RemoveAll(dir)
	}
}

// TestSeveralDisksShareOneInstant: one machine with two images in one btrfs
// subvolume, written by one writer with one global write sequence: every
// point shows one N across both disks. The writer goes through the page
// cache, so the source driver pauses it around the snapshot (see
// agent/snapshot btrfsView: without a pause, the snapshot's own writeback
// can catch a later write without an earlier one).
func TestSeveralDisksShareOneInstant(t *testing.T) {
	mnt := testenv.MountLoop(t, "btrfs", 1<<30)
	vol := filepath.Join(mnt, "vm")
	testenv.Run(t, "btrfs", "subvolume", "create", vol)
	const size = 64 << 20
	a, b := filepath.Join(vol, "a.img"), filepath.Join(vol, "b.img")
	ia, ib := makeImage(t, a, 21, size), makeImage(t, b, 22, size)

	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src")
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	w, pause, resume := StartPausableWriter(t, []string{a, b}, size, 6, 200*time.Microsecond)
	c.MustFerry("protect", "vm2", "--agent", "src", "--disk", "a="+a, "--disk", "b="+b, "--policy", "fast",
		"--pause", pause, "--resume", resume)
	first := c.WaitPoint("vm2", 0, 120*time.Second)

	pts := pointsDuring(t, c, "vm2", first.ID, 5, 120*time.Second)
	w.Stop()
	require.Contains(t, src.Proc.Output(), "method=driver-pause+btrfs-snapshot")
	log := w.Log()
	last := -1
	for _, p := range pts {
		require.Equal(t, "crash-consistent", p.Consistency)
		dir := c.Export("vm2", p.ID)
		n := PrefixLength(t, dir, []string{"a", "b"}, [][]byte{ia, ib}, log, 6)
		t.Logf("point %d = both disks at write %d", p.ID, n)
		require.Greater(t, n, last)
		last = n
		os.RemoveAll(dir)
	}
}

// checkPointPrefixes exports each of pts that made holds (nil: every
// one), requires it crash-consistent, and checks it with prefix, which
// returns how far into the test's own write log the point is (and fails
// the test when it holds no prefix of it). The prefixes must grow from
// point to point (strictly when strict); at most max when max ≥ 0. It
// returns how many points were checked and the last prefix.
func checkPointPrefixes(t *testing.T, c *Controller, machine string, pts []Point, made map[int64]bool, strict bool, max int,
	prefix func(dir string) int) (checked, last int) {
	t.Helper()
	last = -1
	for _, p := range pts {
		if made != nil && !made[p.ID] {
			continue
		}
		require.Equal(t, "crash-consistent", p.Consistency, "point %d (%s): %s", p.ID, p.Method, p.Reason)
		dir := c.Export(machine, p.ID)
		n := prefix(dir)
		t.Logf("point %d (%s) = 1..%d of the log", p.ID, p.Method, n)
		if strict {
			require.Greater(t, n, last, "point %d", p.ID)
		} else {
			require.GreaterOrEqual(t, n, last, "point %d", p.ID)
		}
		if max >= 0 {
			require.LessOrEqual(t, n, max, "point %d", p.ID)
		}
		last = n
		checked++
		os.RemoveAll(dir)
	}
	return checked, last
}
