package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
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
// below one cycle's changes, a cycle holding the delta thaws and takes a
// clone view instead and says why; no tracked freeze ever captures more
// than the limit; the first point after the delta equals the image; and
// with the writer quiet, a later cycle is a capture again.
//
// Which cycle holds the delta is the agent's timing, not the test's: a
// cycle that begins after the writes and sees nothing new is a tracked
// freeze of zero bytes, rightly. So the test asks for the fallback among
// the points up to the first one after the delta, and for the limit on
// every capture, from the controller's record of what each point captured.
func TestTrackedFreezeFallsBackWhenTheChangesDoNotFit(t *testing.T) {
	testenv.RequireRoot(t)
	_, err := os.Stat("/sys/kernel/tracing/instances")
	testenv.Require(t, err == nil, "tracefs is not mounted at /sys/kernel/tracing")
	mnt := testenv.MountLoop(t, "xfs", 1<<30)
	const size = 64 << 20
	const maxCapture = 65536
	img := filepath.Join(mnt, "d.img")
	makeImage(t, img, 33, size)

	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src", "--track-writes", "--max-capture", strconv.Itoa(maxCapture))
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "vm4", "--agent", "src", "--disk", "d="+img, "--policy", "fast")
	first := c.WaitPoint("vm4", 0, 120*time.Second)

	require.NoError(t, workload.Apply(img, 9, workload.Delta(9, size, 0.05)))
	after := time.Now()
	want, err := os.ReadFile(img)
	require.NoError(t, err)
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

	// The agent logs a point after the controller commits it, so its line
	// may still be on its way when the point is listed.
	src.Proc.WaitOutput(regexp.MustCompile(fmt.Sprintf(`msg="point made" [^\n]*point=%d `, p.ID)), 30*time.Second)
	fellBack := fallbacksForCapture(src.Proc.Output())
	var held []int64
	for id := first.ID + 1; id <= p.ID; id++ {
		if fellBack[id] {
			held = append(held, id)
		}
	}
	require.NotEmpty(t, held, "no point from %d to %d fell back to a clone view because the changes exceeded the capture", first.ID+1, p.ID)
	// The writer is quiet now, so a later cycle fits and is a capture
	// again: the fallback holds for a cycle, not for good.
	var captured map[int64]int64
	require.Eventually(t, func() bool {
		captured = bytesCaptured(c.Proc.Output())
		for id := range captured {
			if id > p.ID {
				return true
			}
		}
		return false
	}, 30*time.Second, 200*time.Millisecond, "no tracked freeze after point %d, with the writer quiet", p.ID)
	for id, n := range captured {
		require.LessOrEqual(t, n, int64(maxCapture), "point %d is a tracked freeze that captured %d bytes, over --max-capture", id, n)
		require.False(t, fellBack[id], "point %d both fell back and was a capture", id)
	}
	require.Equal(t, "crash-consistent", p.Consistency)
	got, err := os.ReadFile(filepath.Join(c.Export("vm4", p.ID), "d.raw"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "point %d differs from the image", p.ID)
}

// fallbacksForCapture: the points an agent made by a clone view because
// the cycle's changes exceeded what one capture may hold, from its log (the
// fallback line comes before the point's own line).
func fallbacksForCapture(out string) map[int64]bool {
	got := map[int64]bool{}
	fellBack := false
	made := regexp.MustCompile(`msg="point made" .*point=(\d+) .*method=(\S+)`)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "this cycle's view is made without it") {
			fellBack = strings.Contains(line, "exceed what one capture may hold")
			continue
		}
		if m := made.FindStringSubmatch(line); m != nil {
			if fellBack && m[2] != "tracked-freeze" {
				id, _ := strconv.ParseInt(m[1], 10, 64)
				got[id] = true
			}
			fellBack = false
		}
	}
	return got
}

// bytesCaptured: for each point the controller committed as a tracked
// freeze, the bytes its capture held, from the commit's reason. It takes
// no *testing.T: it runs inside require.Eventually's goroutine, where a
// failed require could not stop the test (the pattern admits digits only).
func bytesCaptured(out string) map[int64]int64 {
	got := map[int64]int64{}
	re := regexp.MustCompile(`msg="point committed" .*point=(\d+) .*method=tracked-freeze reason="frozen \d+ ms, (\d+) bytes captured`)
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		id, _ := strconv.ParseInt(m[1], 10, 64)
		n, _ := strconv.ParseInt(m[2], 10, 64)
		got[id] = n
	}
	return got
}
