package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/internal/workload"
)

// pointsMadeBy is the ids of the points the agent's log says it made with
// method.
func pointsMadeBy(out, method string) map[int64]bool {
	got := map[int64]bool{}
	re := regexp.MustCompile(`msg="point made" .*point=(\d+) .*method=` + regexp.QuoteMeta(method) + `\b`)
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		id, _ := strconv.ParseInt(m[1], 10, 64)
		got[id] = true
	}
	return got
}

// TestTrackedFreezePointsArePrefixesOfTheWriteLog: two raw images on one
// loop mount (XFS, then ext4), written by one writer with one global write sequence,
// replicated by an agent with --track-writes. The points after the first
// are made by freezing the filesystem and reading the pages the tracker
// saw change (no clone); each must equal the initial images plus exactly
// the first N logged writes on both disks, N growing. Then a hole punched
// into one image, which the tracker cannot describe: the next point comes
// from the taker's view (a clone on XFS, a direct read of the now quiet
// images on ext4, quiet-file) and equals the images' bytes as the test
// leaves them. On ext4, which has no reflink, the first point after the
// start is a direct read: the points after it are tracked freezes all the
// same.
func TestTrackedFreezePointsArePrefixesOfTheWriteLog(t *testing.T) {
	testenv.RequireRoot(t)
	_, err := os.Stat("/sys/kernel/tracing/instances")
	testenv.Require(t, err == nil, "tracefs is not mounted at /sys/kernel/tracing")
	for _, fs := range []string{"xfs", "ext4"} {
		t.Run(fs, func(t *testing.T) { trackedFreezePrefixes(t, fs) })
	}
}

func trackedFreezePrefixes(t *testing.T, fstype string) {
	mnt := testenv.MountLoop(t, fstype, 1<<30)
	const size = 64 << 20
	a, b := filepath.Join(mnt, "a.img"), filepath.Join(mnt, "b.img")
	ia, ib := makeImage(t, a, 31, size), makeImage(t, b, 32, size)

	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src", "--track-writes")
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "vm3", "--agent", "src", "--disk", "a="+a, "--disk", "b="+b, "--policy", "fast")
	first := c.WaitPoint("vm3", 0, 120*time.Second)

	w := StartWriter(t, []string{a, b}, size, 7, 100*time.Microsecond)
	pts := pointsDuring(t, c, "vm3", first.ID, 6, 120*time.Second)
	w.Stop()
	require.NoError(t, w.Err)
	log := w.Log()
	frozen := pointsMadeBy(src.Proc.Output(), "tracked-freeze")
	t.Logf("writer made %d writes; checking %d points, %d made by tracked freezes", len(log), len(pts), len(frozen))
	last, checked := -1, 0
	for _, p := range pts {
		if !frozen[p.ID] {
			continue // the clone views of two disks, cloned one after the other
		}
		require.Equal(t, "crash-consistent", p.Consistency)
		dir := c.Export("vm3", p.ID)
		n := PrefixLength(t, dir, []string{"a", "b"}, [][]byte{ia, ib}, log, 7)
		t.Logf("point %d (tracked freeze) = both disks at write %d", p.ID, n)
		require.Greater(t, n, last)
		last = n
		checked++
		os.RemoveAll(dir)
	}
	require.GreaterOrEqual(t, checked, 4, "most points under writes must come from tracked freezes")

	// A punched hole: the tracker marks its window lost; the next point is
	// a clone view's and holds the hole.
	f, err := os.OpenFile(a, os.O_RDWR, 0)
	require.NoError(t, err)
	require.NoError(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 1<<20, 1<<20))
	require.NoError(t, f.Close())
	wantA, err := os.ReadFile(a)
	require.NoError(t, err)
	wantB, err := os.ReadFile(b)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 1<<20), wantA[1<<20:2<<20])
	newest := pts[len(pts)-1].ID
	var p Point
	require.Eventually(t, func() bool {
		for _, x := range c.Points("vm3") {
			if x.ID > newest && !pointsMadeBy(src.Proc.Output(), "tracked-freeze")[x.ID] {
				p = x
				return true
			}
		}
		return false
	}, 60*time.Second, 200*time.Millisecond, "no clone-view point after the punched hole")
	require.Contains(t, src.Proc.Output(), "space was punched")
	dir := c.Export("vm3", p.ID)
	for name, want := range map[string][]byte{"a": wantA, "b": wantB} {
		got, err := os.ReadFile(filepath.Join(dir, name+".raw"))
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "disk %s of point %d differs from the image", name, p.ID)
	}
}

// TestTrackedFreezeFallsBackWhenTheChangesDoNotFit: with --max-capture
// below one cycle's changes, every cycle thaws and takes a clone view
// instead, says why, and its points still equal the image.
func TestTrackedFreezeFallsBackWhenTheChangesDoNotFit(t *testing.T) {
	testenv.RequireRoot(t)
	_, err := os.Stat("/sys/kernel/tracing/instances")
	testenv.Require(t, err == nil, "tracefs is not mounted at /sys/kernel/tracing")
	mnt := testenv.MountLoop(t, "xfs", 1<<30)
	const size = 64 << 20
	img := filepath.Join(mnt, "d.img")
	makeImage(t, img, 33, size)

	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src", "--track-writes", "--max-capture", "65536")
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "vm4", "--agent", "src", "--disk", "d="+img, "--policy", "fast")
	first := c.WaitPoint("vm4", 0, 120*time.Second)

	require.NoError(t, workload.Apply(img, 9, workload.Delta(9, size, 0.05)))
	want, err := os.ReadFile(img)
	require.NoError(t, err)
	after := time.Now()
	var p Point
	require.Eventually(t, func() bool {
		for _, x := range c.Points("vm4") {
			if x.ID > first.ID && x.Time.After(after) {
				p = x
				return true
			}
		}
		return false
	}, 60*time.Second, 200*time.Millisecond, "no point after the delta")
	require.Contains(t, src.Proc.Output(), "exceed what one capture may hold")
	require.False(t, pointsMadeBy(src.Proc.Output(), "tracked-freeze")[p.ID], "the point cannot be a capture")
	require.Equal(t, "crash-consistent", p.Consistency)
	got, err := os.ReadFile(filepath.Join(c.Export("vm4", p.ID), "d.raw"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "point %d differs from the image", p.ID)
}
