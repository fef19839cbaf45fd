package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/internal/testenv"
)

// fsWriter makes numbered steps inside one or more mounted filesystems,
// one after another, each durable (fsync of the file and of the
// directory) before the next begins. Step i goes into the directory
// fsWriterDir(i) of the writer's dirs: with two filesystems, the steps
// alternate between them. Step i creates the file f<i> with content of
// its own (fsWriterFile), except every fifth step, which rewrites in
// place one of the 4 KiB slots of that directory's rewrite.dat
// (fsWriterSlot). A crash-consistent image of the filesystems, taken at
// one instant, therefore shows steps 1..N and possibly a partial step
// N+1, for some N (checkFSPrefix).
type fsWriter struct {
	dirs []string
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	steps    int           // steps completed
	maxStall time.Duration // the longest step
	err      error
}

const (
	fsWriterSlots  = 32
	fsWriterRewrit = 5 // every fifth step rewrites a slot
)

func fsWriterRewrites(i int) bool { return i%fsWriterRewrit == 0 }
func fsWriterSlotOf(i int) int    { return (i / fsWriterRewrit) % fsWriterSlots }

// fsWriterDir is the index, among n directories, of the one step i
// writes into.
func fsWriterDir(i, n int) int { return i % n }

// fsWriterFile is step i's file content: 1 to 16 KiB.
func fsWriterFile(i int) []byte {
	line := fmt.Sprintf("file %08d of the ordered filesystem writer\n", i)
	n := 1024 * (1 + i%16)
	return bytes.Repeat([]byte(line), n/len(line)+1)[:n]
}

// fsWriterSlot is the 4 KiB that step i writes into its slot.
func fsWriterSlot(i int) []byte {
	line := fmt.Sprintf("slot %02d rewritten by step %08d\n", fsWriterSlotOf(i), i)
	return bytes.Repeat([]byte(line), 4096/len(line)+1)[:4096]
}

// startFSWriter creates rewrite.dat in each of dirs (durably) and
// starts writing.
func startFSWriter(t *testing.T, pause time.Duration, dirs ...string) *fsWriter {
	t.Helper()
	require.NotEmpty(t, dirs)
	for _, dir := range dirs {
		f, err := os.Create(filepath.Join(dir, "rewrite.dat"))
		require.NoError(t, err)
		_, err = f.Write(make([]byte, 4096*fsWriterSlots))
		require.NoError(t, err)
		require.NoError(t, f.Sync())
		require.NoError(t, f.Close())
		require.NoError(t, syncDir(dir))
	}
	w := &fsWriter{dirs: dirs, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run(pause)
	t.Cleanup(w.Stop)
	return w
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (w *fsWriter) run(pause time.Duration) {
	defer close(w.done)
	rws := make([]*os.File, len(w.dirs))
	for d, dir := range w.dirs {
		rw, err := os.OpenFile(filepath.Join(dir, "rewrite.dat"), os.O_RDWR, 0)
		if err != nil {
			w.fail(err)
			return
		}
		defer rw.Close()
		rws[d] = rw
	}
	for i := 1; ; i++ {
		select {
		case <-w.stop:
			return
		case <-time.After(pause):
		}
		start := time.Now()
		d := fsWriterDir(i, len(w.dirs))
		if err := w.step(w.dirs[d], rws[d], i); err != nil {
			w.fail(fmt.Errorf("step %d: %w", i, err))
			return
		}
		took := time.Since(start)
		w.mu.Lock()
		w.steps = i
		w.maxStall = max(w.maxStall, took)
		w.mu.Unlock()
	}
}

func (w *fsWriter) step(dir string, rw *os.File, i int) error {
	if fsWriterRewrites(i) {
		if _, err := rw.WriteAt(fsWriterSlot(i), int64(4096*fsWriterSlotOf(i))); err != nil {
			return err
		}
		return rw.Sync()
	}
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("f%08d", i)), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(fsWriterFile(i)); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return syncDir(dir)
}

func (w *fsWriter) fail(err error) {
	w.mu.Lock()
	w.err = err
	w.mu.Unlock()
}

// Stop stops the writer after its current step; it may be called twice.
func (w *fsWriter) Stop() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *fsWriter) state() (steps int, maxStall time.Duration, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.steps, w.maxStall, w.err
}

// checkFSPrefix reads the writer's files in dirs (mounted copies of a
// point's disks, in the writer's order) and returns N: the steps 1..N are
// all there (every file f<i> complete in its own directory, every slot
// holding its last rewrite up to N), and nothing of a later step is, but
// for step N+1's file, which may be partial. With the steps alternating
// between two filesystems, copies of the two taken at different instants
// fail it: the later one holds a step whose predecessor, on the other,
// is missing (a gap), or the other holds steps past the end (an overrun).
func checkFSPrefix(t *testing.T, dirs ...string) int {
	t.Helper()
	require.NotEmpty(t, dirs)
	complete, partial := map[int]bool{}, map[int]bool{}
	slot := make([][]int, len(dirs)) // per directory, the step each slot holds (0: none yet)
	re := regexp.MustCompile(`^slot (\d\d) rewritten by step (\d{8})\n`)
	for d, dir := range dirs {
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, e := range entries {
			name, ok := strings.CutPrefix(e.Name(), "f")
			if !ok {
				continue
			}
			i, err := strconv.Atoi(name)
			require.NoError(t, err, "unexpected file %s", e.Name())
			require.Equal(t, fsWriterDir(i, len(dirs)), d, "file %s is on the wrong filesystem", e.Name())
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			require.NoError(t, err)
			if bytes.Equal(b, fsWriterFile(i)) {
				complete[i] = true
			} else {
				partial[i] = true
			}
		}
		rw, err := os.ReadFile(filepath.Join(dir, "rewrite.dat"))
		require.NoError(t, err)
		require.Len(t, rw, 4096*fsWriterSlots)
		slot[d] = make([]int, fsWriterSlots)
		for s := range slot[d] {
			b := rw[4096*s : 4096*(s+1)]
			if bytes.Equal(b, make([]byte, 4096)) {
				continue
			}
			m := re.FindSubmatch(b)
			require.NotNil(t, m, "%s: slot %d holds neither zeros nor a rewrite: %q", dir, s, b[:64])
			i, _ := strconv.Atoi(string(m[2]))
			require.True(t, fsWriterRewrites(i) && fsWriterSlotOf(i) == s && fsWriterDir(i, len(dirs)) == d && bytes.Equal(b, fsWriterSlot(i)),
				"%s: slot %d holds a torn or misplaced rewrite (step %d)", dir, s, i)
			slot[d][s] = i
		}
	}
	visible := func(i int) bool {
		if fsWriterRewrites(i) {
			return slot[fsWriterDir(i, len(dirs))][fsWriterSlotOf(i)] >= i
		}
		return complete[i]
	}
	n := 0
	for visible(n + 1) {
		n++
	}
	for i := range complete {
		require.LessOrEqual(t, i, n, "file f%08d is complete but step %d is missing", i, n+1)
	}
	for i := range partial {
		require.Equal(t, n+1, i, "file f%08d is partial, but the steps end at %d", i, n)
	}
	for d := range slot {
		for s, i := range slot[d] {
			require.LessOrEqual(t, i, n, "%s: slot %d holds step %d, after the steps end at %d", dirs[d], s, i, n)
		}
	}
	return n
}

// exportedFS is how a point's copy of a filesystem is mounted and checked.
type exportedFS struct {
	mount []string // mount's options
	fsck  []string // a read-only check that fails unless the filesystem is clean
}

var exportedFSes = map[string]exportedFS{
	"ext4": {mount: []string{"-t", "ext4"}, fsck: []string{"fsck.ext4", "-n", "-f"}},
	// The copy has its source's UUID, which XFS refuses to mount twice;
	// xfs_repair -n exits non-zero on any inconsistency (and on a dirty
	// log, which the mount has replayed).
	"xfs": {mount: []string{"-t", "xfs", "-o", "nouuid"}, fsck: []string{"xfs_repair", "-n"}},
}

// checkExported attaches a point's exported raw images (of fstype, in
// the writer's order) to loop devices, mounts them read-write (the mount
// replays the journal or log, as after a crash), checks the writer's
// steps across them all, unmounts them and runs the filesystem's
// read-only check, which must find each clean. It returns the writer's
// prefix.
func checkExported(t *testing.T, fstype string, imgs ...string) int {
	t.Helper()
	fs, ok := exportedFSes[fstype]
	require.True(t, ok, "no way to check an exported %s", fstype)
	var devs, mnts []string
	defer func() {
		for _, m := range mnts {
			exec.Command("umount", m).Run()
		}
		for _, d := range devs {
			exec.Command("losetup", "-d", d).Run()
		}
	}()
	for _, img := range imgs {
		dev := strings.TrimSpace(testenv.Run(t, "losetup", "-f", "--show", img))
		devs = append(devs, dev)
		mnt := t.TempDir()
		testenv.Run(t, "mount", append(append(fs.mount[:len(fs.mount):len(fs.mount)], dev), mnt)...)
		mnts = append(mnts, mnt)
	}
	n := checkFSPrefix(t, mnts...)
	for len(mnts) > 0 {
		testenv.Run(t, "umount", mnts[0])
		mnts = mnts[1:]
	}
	for _, dev := range devs {
		testenv.Run(t, fs.fsck[0], append(fs.fsck[1:len(fs.fsck):len(fs.fsck)], dev)...)
	}
	return n
}

// pointsInOrder is the point ids the log says were made, oldest first,
// with their method.
func pointsInOrder(out string) (ids []int64, methods []string) {
	re := regexp.MustCompile(`msg="point made" .*point=(\d+) .*method=([a-z-]+)`)
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		id, _ := strconv.ParseInt(m[1], 10, 64)
		ids, methods = append(ids, id), append(methods, m[2])
	}
	return ids, methods
}

// TestTrackedFreezeOfAMountedBlockDevice protects a loop device that
// holds a mounted ext4 filesystem, with --track-writes: the eBPF dirty
// bitmap (agent/bdtrack) tracks the device, and each point after the
// first is made by freezing the filesystem and reading the dirty blocks
// with O_DIRECT. A writer makes fsynced steps in the filesystem (new
// files, and blocks of one file rewritten in place). Every tracked-freeze
// point, exported, mounted (its journal replayed) and checked with
// fsck.ext4, shows the steps 1..N with N growing; no write waits longer
// than --max-freeze. Then the agent restarts between cycles: the tracker
// is still pinned, and the first point of the new run is again a tracked
// freeze, without a hash resync.
func TestTrackedFreezeOfAMountedBlockDevice(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "fsck.ext4")
	testenv.RequireTool(t, "fsfreeze")
	const maxFreeze = 3 * time.Second
	dev := testenv.LoopDevice(t, 256<<20)
	// The agent leaves its tracker pinned (that is the point); the test
	// unpins it before the device goes.
	t.Cleanup(func() { bdtrack.RemovePinned(dev, bdtrack.Options{}) })
	mnt := testenv.MountExt4(t, dev)
	w := startFSWriter(t, 2*time.Millisecond, mnt)

	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src", "--track-writes", "--max-freeze", maxFreeze.String())
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "pm1", "--agent", "src", "--disk", "root="+dev, "--policy", "fast")
	c.WaitPoint("pm1", 0, 120*time.Second)
	first := c.Points("pm1")[0] // the second may be made already
	require.Regexp(t, `block device's tracker starts afresh.* fresh=true`, src.Proc.Output())
	require.Equal(t, "direct-read", first.Method, "the first point cannot be tracked: %+v", first)

	pts := pointsDuring(t, c, "pm1", first.ID, 20, 180*time.Second)
	before := src.Proc.Output()
	src.Proc.Stop()
	steps, _, _ := w.state()
	src.Start()
	src.Proc.WaitOutput(regexp.MustCompile(`tracker goes on from its pinned bitmap.* fresh=false`), 60*time.Second)
	after := pointsDuring(t, c, "pm1", pts[len(pts)-1].ID, 5, 120*time.Second)
	w.Stop()
	total, stall, err := w.state()
	require.NoError(t, err)
	t.Logf("writer made %d steps (%d before the restart), longest %s", total, steps, stall)
	require.LessOrEqual(t, stall, maxFreeze, "a write waited longer than --max-freeze")

	// The new run's first point is a tracked freeze, without a resync.
	restarted := src.Proc.Output()
	ids, methods := pointsInOrder(restarted)
	require.NotEmpty(t, ids)
	require.Equal(t, "tracked-freeze", methods[0], "the first point after the restart (%d)", ids[0])
	require.NotContains(t, restarted, "hash resync")

	frozen := pointsMadeBy(before+restarted, "tracked-freeze")
	checked, _ := checkPointPrefixes(t, c, "pm1", append(pts, after...), frozen, true, total, func(dir string) int {
		return checkExported(t, "ext4", filepath.Join(dir, "root.raw"))
	})
	require.GreaterOrEqual(t, checked, 20, "points under writes must come from tracked freezes")
}
