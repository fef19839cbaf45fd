package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/internal/testenv"
)

// TestBlockTrackerFaults protects a loop device holding a mounted ext4
// filesystem with --track-writes (the eBPF dirty bitmap, agent/bdtrack),
// a writer making fsynced steps in it, and loses the tracking in each way
// the tracker knows of, one after another on the same machine:
//
//   - the agent is killed with SIGKILL inside the freeze (a test-only hook,
//     FERRY_TEST_FREEZE_HOLD, holds the cut so that the kill lands there):
//     the filesystem stays frozen until the agent starts again and thaws
//     it, and the cuts drained into the dead run's memory are gone;
//   - the agent is killed while it ships a cycle's changes (after the
//     freeze and its save; a bandwidth limit makes the shipping last):
//     the next start resumes a pending point, which the capture cannot;
//   - the pinned program links are removed under bpffs while the agent
//     runs (the agent's own link descriptors keep the program attached, so
//     its points stay tracked), then the agent is killed: the program
//     detaches, writes go unmarked, and the next start finds it detached;
//   - an overflow is counted in the running tracker from outside, through
//     its pinned ctl map, as a request too large to mark would;
//   - the pinned bitmap is removed from bpffs while the agent is stopped;
//   - the tracker's saved state is overwritten with garbage while the agent
//     is stopped;
//   - the device grows (backing file, losetup -c; not the filesystem),
//     once while the agent runs and once while it is stopped.
//
// Each must make the agent log the fault as the reason its next view is
// made without the tracker (or its cycle retried without it), and that view must be a read of the whole
// device (a hash resync: container_read_bytes grows by the device size).
// Every point after it, exported, mounted (journal replayed) and checked
// with fsck.ext4 -n, holds a prefix of the running writer's steps and all
// the steps of the writers stopped before it; the resync points made with
// the writer stopped hold exactly its steps. At the end the filesystem is
// unmounted and data written into the grown tail, and a point made then
// equals the device byte for byte.
func TestBlockTrackerFaults(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "fsck.ext4")
	testenv.RequireTool(t, "fsfreeze")
	const maxFreeze = 3 * time.Second
	dev, backing := testenv.LoopFile(t, 128<<20)
	t.Cleanup(func() { bdtrack.RemovePinned(dev, bdtrack.Options{}) })
	// Without eBPF block tracking here, no fault could be told apart.
	probe, err := bdtrack.Open(dev, 65536, bdtrack.Options{})
	testenv.Require(t, !errors.Is(err, bdtrack.ErrUnsupported), fmt.Sprintf("block device tracking: %v", err))
	require.NoError(t, err)
	require.NoError(t, probe.Remove())
	var st unix.Stat_t
	require.NoError(t, unix.Stat(dev, &st))
	devID := fmt.Sprintf("%d_%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	mnt := testenv.MountExt4(t, dev)
	// The hook's file is on a filesystem the agent does not freeze.
	hold := filepath.Join(t.TempDir(), "hold-freeze")
	t.Setenv("FERRY_TEST_FREEZE_HOLD", hold)

	ph := &phases{t: t, mnt: mnt}
	ph.start()
	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src", "--track-writes", "--max-freeze", maxFreeze.String())
	al := &agentLog{a: src}
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "pm1", "--agent", "src", "--disk", "root="+dev, "--policy", "fast")
	c.WaitPoint("pm1", 0, 120*time.Second)
	ph.checkTracked(c, al, al.waitTracked(t, 0, 2, 90*time.Second))

	// fault waits for the agent to log why a view is made without the
	// tracker (reason, among what it logged from offset on), then for
	// the first point after it not made by a tracked freeze; that point
	// must have read the whole device. It returns the point.
	said := regexp.MustCompile(`[^\n]*(view is made without it|tracker starts afresh|retried without write tracking)[^\n]*`)
	fault := func(offset int, reason string) pointLine {
		t.Helper()
		require.Eventually(t, func() bool {
			for _, l := range said.FindAllString(al.out()[offset:], -1) {
				if strings.Contains(l, reason) {
					return true
				}
			}
			return false
		}, 60*time.Second, 50*time.Millisecond,
			"the agent never said its view is made without the tracker because %q; log:\n%s", reason, al.out()[offset:])
		var r pointLine
		require.Eventually(t, func() bool {
			for _, p := range al.points(offset) {
				if p.method != "tracked-freeze" {
					r = p
					return true
				}
			}
			return false
		}, 60*time.Second, 100*time.Millisecond, "no point after the fault (%s) was made without the tracker", reason)
		size := fileSize(t, backing)
		t.Logf("%s: point %d made by %s read %d bytes of the %d-byte device", reason, r.id, r.method, r.read, size)
		require.GreaterOrEqual(t, r.read, size, "point %d after %q did not read the whole device: no hash resync", r.id, reason)
		return r
	}

	t.Run("KillInTheFreeze", func(t *testing.T) {
		require.NoError(t, os.WriteFile(hold, nil, 0o600))
		require.Eventually(t, func() bool {
			_, err := os.Stat(hold)
			return errors.Is(err, fs.ErrNotExist)
		}, 30*time.Second, time.Millisecond, "the agent never reached the freeze hook")
		src.Proc.Kill() // within the hook's 2 s: the filesystem is frozen
		offset := len(al.out())
		// Nothing thaws the filesystem but the next start.
		steps, _, _ := ph.w.state()
		probe := make(chan error, 1)
		go func() { probe <- os.WriteFile(filepath.Join(mnt, "probe"), []byte("probe"), 0o644) }()
		select {
		case err := <-probe:
			t.Fatalf("a write went through with the agent killed inside the freeze (%v): the kill missed the freeze", err)
		case <-time.After(time.Second):
		}
		after, _, _ := ph.w.state()
		require.LessOrEqual(t, after, steps+1, "the writer made steps while the filesystem was frozen")
		al.restart()
		src.Proc.WaitOutput(regexp.MustCompile(`thawed the filesystem a previous run left frozen`), 30*time.Second)
		select {
		case err := <-probe:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Fatal("the probe write still waits: the restart did not thaw the filesystem")
		}
		r := fault(offset, "state was not saved")
		ph.checkTracked(c, al, al.waitTracked(t, r.id, 2, 60*time.Second))
	})

	t.Run("KillWhileShipping", func(t *testing.T) {
		// A bandwidth limit makes the shipping of one cycle's changes
		// last seconds: a kill shortly after the controller began the
		// cycle lands in it, after the freeze and its save.
		c.MustFerry("policies", "update", "fast", "--bandwidth", "64KiB/s")
		// The next cycle gets the limit; the one after it is killed.
		seen := len(c.Proc.Output())
		began := regexp.MustCompile(`msg="cycle begins"[^\n]*machine=pm1`)
		for range 2 {
			require.Eventually(t, func() bool {
				loc := began.FindStringIndex(c.Proc.Output()[seen:])
				if loc == nil {
					return false
				}
				seen += loc[1]
				return true
			}, 60*time.Second, 10*time.Millisecond, "no cycle began")
		}
		time.Sleep(500 * time.Millisecond)
		offset := len(al.out())
		src.Proc.Kill()
		require.NotContains(t, c.Proc.Output()[seen:], `msg="point committed"`, "the cycle ended before the kill, which missed its shipping")
		c.MustFerry("policies", "update", "fast", "--bandwidth", "0")
		al.restart()
		r := fault(offset, "resumes a pending point")
		ph.checkTracked(c, al, al.waitTracked(t, r.id, 2, 60*time.Second))
	})

	t.Run("ProgramDetached", func(t *testing.T) {
		links, err := filepath.Glob(filepath.Join("/sys/fs/bpf/ferry", devID, "link_*"))
		require.NoError(t, err)
		require.NotEmpty(t, links, "no pinned links for %s", dev)
		offset := len(al.out())
		for _, l := range links {
			require.NoError(t, os.Remove(l))
		}
		// The agent's own link descriptors keep the program attached:
		// its points stay tracked, and correct.
		pts := al.waitTracked(t, al.lastPoint(), 2, 60*time.Second)
		require.NotRegexp(t, `view is made without it`, al.out()[offset:])
		ph.checkTracked(c, al, pts)
		// Its death detaches the program: the writes from then on are
		// marked by nothing.
		offset = len(al.out())
		src.Proc.Kill()
		time.Sleep(500 * time.Millisecond)
		al.restart()
		r := fault(offset, "tracker program was detached")
		ph.checkTracked(c, al, al.waitTracked(t, r.id, 2, 60*time.Second))
	})

	t.Run("InjectedOverflow", func(t *testing.T) {
		ph.stop()
		offset := len(al.out())
		require.NoError(t, bdtrack.MarkOverflow(dev, bdtrack.Options{}))
		r := fault(offset, "too large for the dirty bitmap to mark")
		ph.check(c, r.id)
	})

	t.Run("PinnedMapRemoved", func(t *testing.T) {
		src.Proc.Stop()
		require.NoError(t, os.Remove(filepath.Join("/sys/fs/bpf/ferry", devID, "bits")))
		offset := len(al.out())
		al.restart()
		r := fault(offset, "does not match")
		ph.check(c, r.id)
	})

	t.Run("CorruptSavedState", func(t *testing.T) {
		src.Proc.Stop()
		state := filepath.Join(src.StateDir, "bdtrack", devID)
		require.FileExists(t, state, "the agent saved no tracker state")
		require.NoError(t, os.WriteFile(state, []byte("FRYBDST\x00 not a state"), 0o600))
		offset := len(al.out())
		al.restart()
		r := fault(offset, "saved state is unreadable")
		ph.check(c, r.id)
		ph.start()
		ph.checkTracked(c, al, al.waitTracked(t, r.id, 2, 60*time.Second))
	})

	t.Run("DeviceGrown", func(t *testing.T) {
		offset := len(al.out())
		require.NoError(t, os.Truncate(backing, 192<<20))
		// The filesystem is not grown: resize2fs online needs
		// CAP_SYS_RESOURCE, which this machine's root lacks. The grown
		// tail is written at the end, unmounted.
		testenv.Run(t, "losetup", "-c", dev)
		r := fault(offset, "resized")
		ph.checkTracked(c, al, al.waitTracked(t, r.id, 2, 60*time.Second))

		// Grown while the agent is stopped: its start finds the pinned
		// tracker sized for the old device.
		src.Proc.Stop()
		offset = len(al.out())
		require.NoError(t, os.Truncate(backing, 256<<20))
		testenv.Run(t, "losetup", "-c", dev)
		al.restart()
		r = fault(offset, "resized")
		ph.checkTracked(c, al, al.waitTracked(t, r.id, 2, 60*time.Second))
	})

	t.Run("QuietDeviceEqualsItsPoint", func(t *testing.T) {
		ph.stop()
		// The agent opens the mount point for each freeze (every second):
		// an unmount that meets one is busy, and the next try is not.
		var out []byte
		require.Eventually(t, func() bool {
			var err error
			out, err = exec.Command("umount", mnt).CombinedOutput()
			return err == nil
		}, 10*time.Second, 50*time.Millisecond, "umount %s: %s", mnt, out)
		// Data in the grown tail, which the filesystem does not cover:
		// the point must hold it too.
		f, err := os.OpenFile(dev, os.O_WRONLY, 0)
		require.NoError(t, err)
		tail := bytes.Repeat([]byte("grown tail of the device\n"), 40000)
		_, err = f.WriteAt(tail, 150<<20)
		require.NoError(t, err)
		require.NoError(t, f.Sync())
		require.NoError(t, f.Close())
		// The second point logged from here on comes from a cycle that
		// began after the unmount: nothing writes the device any more.
		offset := len(al.out())
		var p pointLine
		require.Eventually(t, func() bool {
			pts := al.points(offset)
			if len(pts) < 2 {
				return false
			}
			p = pts[1]
			return true
		}, 60*time.Second, 100*time.Millisecond, "no second point after the unmount")
		dir := c.Export("pm1", p.id)
		defer os.RemoveAll(dir)
		requireSameFile(t, backing, filepath.Join(dir, "root.raw"))
		t.Logf("point %d (%s) equals the unmounted device", p.id, p.method)
	})
}

// phases are the writers of the test, one after another, each in its own
// directory (p0, p1, ...) of the mounted filesystem: a stopped writer's
// steps are all in every later point, the running one's a prefix.
type phases struct {
	t      *testing.T
	mnt    string
	dirs   []string
	totals []int // a stopped writer's steps; -1 while it runs
	last   []int // the prefix the newest checked point held
	w      *fsWriter
}

func (p *phases) start() {
	dir := filepath.Join(p.mnt, fmt.Sprintf("p%d", len(p.dirs)))
	require.NoError(p.t, os.Mkdir(dir, 0o755))
	require.NoError(p.t, syncDir(p.mnt))
	p.dirs, p.totals, p.last = append(p.dirs, dir), append(p.totals, -1), append(p.last, 0)
	p.w = startFSWriter(p.t, 2*time.Millisecond, dir)
	// Runs before the writer's Stop (cleanups run last first): an agent
	// killed inside a freeze, by the test or by its cleanup after a
	// failure, leaves the filesystem frozen, and Stop would wait for the
	// writer's step for ever.
	p.t.Cleanup(func() { exec.Command("fsfreeze", "-u", p.mnt).Run() })
}

func (p *phases) stop() {
	p.w.Stop()
	steps, stall, err := p.w.state()
	require.NoError(p.t, err)
	p.t.Logf("writer %s stopped after %d steps (longest %s)", filepath.Base(p.dirs[len(p.dirs)-1]), steps, stall)
	p.totals[len(p.totals)-1] = steps
	p.w = nil
}

// checkTracked checks points made by tracked freezes.
func (p *phases) checkTracked(c *Controller, al *agentLog, pts []pointLine) {
	p.t.Helper()
	for _, pt := range pts {
		require.Equal(p.t, "tracked-freeze", pt.method, "point %d", pt.id)
		p.check(c, pt.id)
	}
}

// check exports a point, mounts it (ext4 replays its journal, as after a
// crash), checks every writer's steps, unmounts it and runs fsck.ext4 -n.
func (p *phases) check(c *Controller, id int64) {
	t := p.t
	t.Helper()
	dir := c.Export("pm1", id)
	defer os.RemoveAll(dir)
	loop := strings.TrimSpace(testenv.Run(t, "losetup", "-f", "--show", filepath.Join(dir, "root.raw")))
	defer exec.Command("losetup", "-d", loop).Run()
	m := t.TempDir()
	testenv.Run(t, "mount", "-t", "ext4", loop, m)
	mounted := true
	defer func() {
		if mounted {
			exec.Command("umount", m).Run()
		}
	}()
	var got []string
	for i, d := range p.dirs {
		in := filepath.Join(m, filepath.Base(d))
		n := 0
		if _, err := os.Stat(filepath.Join(in, "rewrite.dat")); err == nil {
			n = checkFSPrefix(t, in)
		} else {
			// Only a point made before this writer began may lack its
			// directory (or the file it makes before its first step).
			require.Equal(t, -1, p.totals[i], "point %d lacks %s, whose writer had stopped", id, in)
			entries, _ := os.ReadDir(in)
			require.Empty(t, entries, "point %d: %s holds files but no rewrite.dat", id, in)
		}
		if p.totals[i] >= 0 {
			require.Equal(t, p.totals[i], n, "point %d: writer %s stopped after %d steps", id, filepath.Base(d), p.totals[i])
		} else {
			steps, _, err := p.w.state()
			require.NoError(t, err)
			require.LessOrEqual(t, n, steps, "point %d holds steps the writer has not made", id)
		}
		require.GreaterOrEqual(t, n, p.last[i], "point %d holds fewer steps of %s than an earlier point", id, filepath.Base(d))
		p.last[i] = n
		got = append(got, fmt.Sprintf("%s 1..%d", filepath.Base(d), n))
	}
	testenv.Run(t, "umount", m)
	mounted = false
	testenv.Run(t, "fsck.ext4", "-n", "-f", loop)
	t.Logf("point %d: %s", id, strings.Join(got, ", "))
}

// agentLog is the agent's output over its restarts.
type agentLog struct {
	a    *Agent
	past string
}

func (l *agentLog) out() string { return l.past + l.a.Proc.Output() }

// restart starts the agent again (it was killed or stopped).
func (l *agentLog) restart() {
	l.past = l.out()
	l.a.Start()
}

// pointLine is a "point made" line of the agent's log.
type pointLine struct {
	id     int64
	method string
	read   int64 // bytes the cycle read from the disks (container_read_bytes since the previous point of the same run)
}

var pointMadeRe = regexp.MustCompile(`msg="point made" [^\n]*point=(\d+) [^\n]*method=([a-z-]+)[^\n]* container_read_bytes=(\d+)`)

// points is the points the log says were made from offset on, in order.
func (l *agentLog) points(offset int) []pointLine {
	var out []pointLine
	runs := []string{l.past, l.a.Proc.Output()}
	pos := 0
	for _, run := range runs {
		prev := int64(0) // container_read_bytes counts from the start of a run
		for _, m := range pointMadeRe.FindAllStringSubmatchIndex(run, -1) {
			id, _ := strconv.ParseInt(run[m[2]:m[3]], 10, 64)
			read, _ := strconv.ParseInt(run[m[6]:m[7]], 10, 64)
			if pos+m[0] >= offset {
				out = append(out, pointLine{id: id, method: run[m[4]:m[5]], read: read - prev})
			}
			prev = read
		}
		pos += len(run)
	}
	return out
}

// lastPoint is the newest point the log names (0: none).
func (l *agentLog) lastPoint() int64 {
	pts := l.points(0)
	if len(pts) == 0 {
		return 0
	}
	return pts[len(pts)-1].id
}

// waitTracked waits for n points after point after made by tracked
// freezes, and returns them.
func (l *agentLog) waitTracked(t *testing.T, after int64, n int, timeout time.Duration) []pointLine {
	t.Helper()
	var got []pointLine
	require.Eventually(t, func() bool {
		got = got[:0]
		for _, p := range l.points(0) {
			if p.id > after && p.method == "tracked-freeze" {
				got = append(got, p)
			}
		}
		return len(got) >= n
	}, timeout, 100*time.Millisecond, "fewer than %d tracked-freeze points after point %d", n, after)
	return got[:n]
}

func fileSize(t *testing.T, path string) int64 {
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Size()
}
