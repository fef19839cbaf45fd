package e2e

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/internal/workload"
)

// The big image: 8 GiB, sparse, with eight runs of 256 MiB of data (2 GiB)
// spread over it, one in each GiB at a different place.
const (
	bigSize     = 8 << 30
	bigRunLen   = 256 << 20
	bigRuns     = 8
	bigInitSeed = 1041 // the initial content's; the writer's seed differs
	bigWriteSeq = 43   // the writer's
	bigHot      = 64   // blocks the writer keeps rewriting
	bigChunk    = 16 << 20
	bigBlock    = 64 << 10 // the policy's block size (the default): what a capture reads per changed block
)

func bigRunStart(k int) int64 { return int64(k)<<30 + int64(k)*37<<20 }

// bigAllocated says whether the initial image holds data at off.
func bigAllocated(off int64) bool {
	k := int(off >> 30)
	return k < bigRuns && off >= bigRunStart(k) && off < bigRunStart(k)+bigRunLen
}

// bigInitial fills p with the initial image's bytes at off (both 4 KiB
// aligned): each data block is workload.Content keyed by its block
// number, so every block differs from every other and from every write.
func bigInitial(p []byte, off int64) {
	for i := 0; i < len(p); i += workload.WriteSize {
		b := p[i : i+workload.WriteSize]
		if o := off + int64(i); bigAllocated(o) {
			workload.Content(b, bigInitSeed, int(o/workload.WriteSize))
		} else {
			clear(b)
		}
	}
}

// writeBigImage creates the initial image with large sequential writes.
func writeBigImage(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, f.Truncate(bigSize))
	buf := make([]byte, bigChunk)
	for k := range bigRuns {
		for off := bigRunStart(k); off < bigRunStart(k)+bigRunLen; off += bigChunk {
			bigInitial(buf, off)
			_, err := f.WriteAt(buf, off)
			require.NoError(t, err)
		}
	}
	require.NoError(t, f.Sync())
}

// startBigWriter is StartWriter for the big image: 4 KiB writes of
// workload.Content, logged in order, a quarter of them to a few hot blocks
// (rewritten across points), the rest anywhere in the 8 GiB — mostly into
// holes, which the filesystem allocates under the tracker.
func startBigWriter(t *testing.T, path string, pause time.Duration) *Writer {
	t.Helper()
	w := &Writer{Paths: []string{path}, Seed: bigWriteSeq, size: bigSize, stop: make(chan struct{}), done: make(chan struct{})}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	go func() {
		defer close(w.done)
		defer f.Close()
		rng := rand.New(rand.NewPCG(bigWriteSeq, 7))
		hot := make([]int64, bigHot)
		for i := range hot {
			hot[i] = rng.Int64N(bigSize/workload.WriteSize) * workload.WriteSize
		}
		buf := make([]byte, workload.WriteSize)
		for seq := 0; ; seq++ {
			select {
			case <-w.stop:
				return
			default:
			}
			off := rng.Int64N(bigSize/workload.WriteSize) * workload.WriteSize
			if rng.IntN(4) == 0 {
				off = hot[rng.IntN(bigHot)]
			}
			workload.Content(buf, bigWriteSeq, seq)
			if _, err := f.WriteAt(buf, off); err != nil {
				w.Err = err
				return
			}
			w.mu.Lock()
			w.log = append(w.log, LoggedWrite{Offset: off, Seq: seq})
			w.mu.Unlock()
			if pause > 0 {
				time.Sleep(pause)
			}
		}
	}()
	t.Cleanup(w.Stop)
	return w
}

// bigEdit is a change the test made itself after the writer's log: a
// range set to given bytes (a punched hole: zeros).
type bigEdit struct {
	off  int64
	data []byte
}

// bigPrefix finds N such that the exported image at path equals the
// initial image plus exactly the first N logged writes (then edits), or
// fails the test. The 8 GiB are never held in memory: the touched blocks
// are compared by digest to find N, then every range where the model or
// the export holds data is compared byte for byte, in chunks.
func bigPrefix(t *testing.T, path string, log []LoggedWrite, edits []bigEdit) int {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(t, err)
	require.Equal(t, int64(bigSize), st.Size(), "exported image size")

	// The edits come after every write: with edits, only the whole log
	// can be the prefix (the test stops the writer before editing).
	n := len(log)
	if len(edits) == 0 {
		n = bigCandidate(t, f, log)
	}
	// Confirm byte for byte, everywhere, at that N: every range where the
	// model or the export holds data is read and compared; elsewhere both
	// are holes, zeros.
	last := map[int64]int{}
	for _, w := range log[:n] {
		last[w.Offset] = w.Seq
	}
	offs := make([]int64, 0, len(last))
	var ranges [][2]int64
	for o := range last {
		offs = append(offs, o)
		ranges = append(ranges, [2]int64{o, o + workload.WriteSize})
	}
	slices.Sort(offs)
	for k := range bigRuns {
		ranges = append(ranges, [2]int64{bigRunStart(k), bigRunStart(k) + bigRunLen})
	}
	for _, e := range edits {
		ranges = append(ranges, [2]int64{e.off, e.off + int64(len(e.data))})
	}
	ranges = append(ranges, dataRanges(t, f, bigSize)...)
	want, got := make([]byte, bigChunk), make([]byte, bigChunk)
	for _, r := range mergeRanges(ranges) {
		for off := r[0]; off < r[1]; off += bigChunk {
			l := min(int64(bigChunk), r[1]-off)
			bigModel(want[:l], off, offs, last, edits)
			_, err := f.ReadAt(got[:l], off)
			require.NoError(t, err)
			if bytes.Equal(want[:l], got[:l]) {
				continue
			}
			for b := int64(0); b < l; b += workload.WriteSize {
				if !bytes.Equal(want[b:b+workload.WriteSize], got[b:b+workload.WriteSize]) {
					require.Failf(t, "export differs from the model", "%s: the block at %d differs from the initial image plus the first %d writes", path, off+b, n)
				}
			}
		}
	}
	return n
}

// bigModel fills p with the model at off: the initial image, the last
// write of each block in offs (sorted; last: its write's seq), the edits.
func bigModel(p []byte, off int64, offs []int64, last map[int64]int, edits []bigEdit) {
	bigInitial(p, off)
	end := off + int64(len(p))
	for i, _ := slices.BinarySearch(offs, off); i < len(offs) && offs[i] < end; i++ {
		workload.Content(p[offs[i]-off:][:workload.WriteSize], bigWriteSeq, last[offs[i]])
	}
	for _, e := range edits {
		lo, hi := max(e.off, off), min(e.off+int64(len(e.data)), end)
		if lo < hi {
			copy(p[lo-off:hi-off], e.data[lo-e.off:])
		}
	}
}

// dataRanges lists where file f holds data (SEEK_DATA, SEEK_HOLE), 4 KiB
// aligned outwards.
func dataRanges(t *testing.T, f *os.File, size int64) [][2]int64 {
	t.Helper()
	var out [][2]int64
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		require.NoError(t, err)
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		require.NoError(t, err)
		out = append(out, [2]int64{data &^ (workload.WriteSize - 1), min(size, (hole+workload.WriteSize-1)&^(workload.WriteSize-1))})
		off = hole
	}
	return out
}

// mergeRanges sorts ranges and joins those that overlap or touch.
func mergeRanges(rs [][2]int64) [][2]int64 {
	slices.SortFunc(rs, func(a, b [2]int64) int { return int(min(max(a[0]-b[0], -1), 1)) })
	var out [][2]int64
	for _, r := range rs {
		if len(out) > 0 && r[0] <= out[len(out)-1][1] {
			out[len(out)-1][1] = max(out[len(out)-1][1], r[1])
			continue
		}
		out = append(out, r)
	}
	return out
}

// timeDataRead is how long reading every data range of the file at path
// takes.
func timeDataRead(t *testing.T, path string) time.Duration {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	buf := make([]byte, bigChunk)
	t0 := time.Now()
	for _, r := range dataRanges(t, f, bigSize) {
		for off := r[0]; off < r[1]; off += bigChunk {
			_, err := f.ReadAt(buf[:min(int64(bigChunk), r[1]-off)], off)
			require.NoError(t, err)
		}
	}
	return time.Since(t0)
}

// bigCandidate is PrefixLengthOf's search on the blocks the writes
// touched, by digest: the only N at which no touched block disagrees.
func bigCandidate(t *testing.T, f *os.File, log []LoggedWrite) int {
	t.Helper()
	got := map[int64][32]byte{}
	buf := make([]byte, workload.WriteSize)
	disagree := map[int64]bool{}
	for _, w := range log {
		if _, ok := got[w.Offset]; ok {
			continue
		}
		_, err := f.ReadAt(buf, w.Offset)
		require.NoError(t, err)
		got[w.Offset] = sha256.Sum256(buf)
		bigInitial(buf, w.Offset)
		if sha256.Sum256(buf) != got[w.Offset] {
			disagree[w.Offset] = true
		}
	}
	if len(disagree) == 0 {
		return 0
	}
	for i, w := range log {
		workload.Content(buf, bigWriteSeq, w.Seq)
		if sha256.Sum256(buf) == got[w.Offset] {
			delete(disagree, w.Offset)
		} else {
			disagree[w.Offset] = true
		}
		if len(disagree) == 0 {
			return i + 1
		}
	}
	require.Fail(t, "the export is not the initial image plus any prefix of the writes", "%d touched blocks disagree at the end of the log", len(disagree))
	return -1
}

// agentReadBytes is what the agent process has read through read(2) and
// its kind so far (rchar: page cache hits count too, unlike read_bytes).
func agentReadBytes(t *testing.T, a *Agent) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", a.Proc.cmd.Process.Pid))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^rchar: (\d+)$`).FindSubmatch(b)
	require.NotNil(t, m, "no rchar in /proc/<pid>/io")
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

var frozenNoteRE = regexp.MustCompile(`frozen (\d+) ms, (\d+) bytes captured`)

// TestTrackedFreezeOfABigSparseImage: an 8 GiB sparse raw image with
// 2 GiB of data on an ext4 loop mount, protected by an agent with
// --track-writes. The first point, of the quiet image, is a quiet-file
// read; under a writer whose every write is logged, the points are
// tracked freezes that read only what the tracker saw change — checked
// from outside the agent by what the process read — and each equals the
// initial image plus the first N logged writes, N growing. With the writer
// stopped the next point is still a tracked freeze (the tracker vouches
// for an empty change set) equal to the whole log. Then a punched hole
// makes the tracker lose its window, so the next view is a direct read of
// the whole image; two writes within one tick of the coarse clock during
// that read, the second putting back the bytes of the first, leave the
// content as it was but must keep the point from being called quiet.
func TestTrackedFreezeOfABigSparseImage(t *testing.T) {
	testenv.RequireRoot(t)
	_, err := os.Stat("/sys/kernel/tracing/instances")
	testenv.Require(t, err == nil, "tracefs is not mounted at /sys/kernel/tracing")
	began := time.Now()
	// 10 GiB of filesystem: the 2 GiB of data, and room for the writer's
	// scattered blocks in the holes.
	mnt := testenv.MountLoop(t, "ext4", 10<<30)
	img := filepath.Join(mnt, "big.img")
	t0 := time.Now()
	writeBigImage(t, img)
	t.Logf("wrote the 8 GiB image with 2 GiB of data in %s", time.Since(t0).Round(time.Millisecond))

	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src", "--track-writes")
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	t0 = time.Now()
	c.MustFerry("protect", "big", "--agent", "src", "--disk", "d="+img, "--policy", "fast")
	first := c.WaitPoint("big", 0, 180*time.Second)
	t.Logf("initial sync: point %d after %s, method %s", first.ID, time.Since(t0).Round(time.Millisecond), first.Method)
	require.Equal(t, "crash-consistent", first.Consistency, "the image is quiet: %s", first.Reason)
	require.Equal(t, "quiet-file", first.Method, "an ext4 image nobody writes is read directly, quiet")
	// points lists the machine's points up to the first whose method is
	// not recorded yet: the controller commits a point before it records
	// how its view was made, and a point listed in between says nothing.
	points := func() []Point {
		ps := c.Points("big")
		for i, p := range ps {
			if p.Method == "" {
				return ps[:i]
			}
		}
		return ps
	}
	exportAndCheck := func(p Point, log []LoggedWrite, edits []bigEdit) int {
		t.Helper()
		t0 := time.Now()
		dir := c.Export("big", p.ID)
		exported := time.Since(t0)
		n := bigPrefix(t, filepath.Join(dir, "d.raw"), log, edits)
		os.RemoveAll(dir)
		t.Logf("point %d (%s): the initial image plus the first %d writes (export %s, check %s)",
			p.ID, p.Method, n, exported.Round(time.Millisecond), (time.Since(t0) - exported).Round(time.Millisecond))
		return n
	}
	require.Equal(t, 0, exportAndCheck(first, nil, nil))

	// What one read of the image's data takes here, now, from the page
	// cache: the least a freeze that re-read the image would last.
	fullRead := timeDataRead(t, img)
	t.Logf("reading the image's 2 GiB of data takes %s", fullRead.Round(time.Millisecond))

	// Under writes.
	read0 := agentReadBytes(t, src)
	w := startBigWriter(t, img, 100*time.Microsecond)
	// The quiet points made while the first was checked are not wanted:
	// the points under writes are those after the newest at the start.
	started := first.ID
	for _, p := range c.Points("big") {
		started = max(started, p.ID)
	}
	var pts []Point
	require.Eventually(t, func() bool {
		pts = pts[:0]
		for _, p := range points() {
			if p.ID > started {
				pts = append(pts, p)
			}
		}
		return len(pts) >= 6
	}, 180*time.Second, 100*time.Millisecond, "fewer than 6 points under writes")
	read1 := agentReadBytes(t, src)
	w.Stop()
	stopped := time.Now()
	require.NoError(t, w.Err)
	log := w.Log()
	written := int64(len(log)) * workload.WriteSize
	last, checked := -1, 0
	var captured int64
	var freezes []int
	for _, p := range pts {
		require.Equal(t, "tracked-freeze", p.Method, "point %d under writes: %s", p.ID, p.Reason)
		require.Equal(t, "crash-consistent", p.Consistency)
		m := frozenNoteRE.FindStringSubmatch(p.Reason)
		require.NotNil(t, m, "point %d says nothing of its freeze: %q", p.ID, p.Reason)
		ms, _ := strconv.Atoi(m[1])
		b, _ := strconv.ParseInt(m[2], 10, 64)
		freezes = append(freezes, ms)
		require.Zero(t, b%bigBlock, "a capture is whole blocks")
		captured += b
		t.Logf("point %d: %s", p.ID, p.Reason)
		n := exportAndCheck(p, log, nil)
		require.Greater(t, n, last, "the points under writes must move forward")
		last = n
		checked++
	}
	t.Logf("under writes: %d points, %d writes (%d MiB), freezes %v ms, %d MiB captured in all, the agent read %d MiB",
		checked, len(log), written>>20, freezes, captured>>20, (read1-read0)>>20)
	require.Less(t, time.Duration(slices.Max(freezes))*time.Millisecond, fullRead, "a freeze lasted longer than reading the image's data")
	// What the agent read while the points were made: the captured pages,
	// the tracker's event text and its messages — never the image again.
	require.Less(t, read1-read0, int64(bigRuns*bigRunLen/4),
		"the agent read %d MiB while making %d points of an image with 2 GiB of data: a cycle re-read the image", (read1-read0)>>20, checked)
	// A capture reads whole blocks of the policy's size: at most one per
	// write the writer made.
	require.LessOrEqual(t, captured, int64(len(log))*bigBlock, "the captures hold more blocks than the writer wrote to")

	// Quiet: the tracker vouches for an empty change set.
	var quiet Point
	require.Eventually(t, func() bool {
		for _, p := range points() {
			if p.ID > pts[len(pts)-1].ID && p.Time.After(stopped.Add(time.Second)) {
				quiet = p
				return true
			}
		}
		return false
	}, 60*time.Second, 200*time.Millisecond, "no point after the writer stopped")
	require.Equal(t, "crash-consistent", quiet.Consistency, quiet.Reason)
	t.Logf("quiet point %d (%s): %s", quiet.ID, quiet.Method, quiet.Reason)
	require.Equal(t, len(log), exportAndCheck(quiet, log, nil), "the quiet point holds every write")

	// A punched hole: the tracker loses its window and the next view is a
	// direct read of the whole image. While the agent reads it, two writes
	// in one tick of the coarse clock, the second undoing the first.
	const holeOff, holeLen = 3<<30 + 100<<20, 1 << 20 // in run 3
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	before := agentReadBytes(t, src)
	punched := time.Now()
	require.NoError(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, holeOff, holeLen))
	require.Eventually(t, func() bool { return agentReadBytes(t, src)-before > 128<<20 }, 60*time.Second, 5*time.Millisecond,
		"the agent did not start reading the image after the hole was punched")
	tickOff := bigRunStart(6) + 4096*1000
	orig := make([]byte, workload.WriteSize)
	_, err = f.ReadAt(orig, tickOff)
	require.NoError(t, err)
	other := bytes.Repeat([]byte{0xAA}, workload.WriteSize)
	inOneTick := false
	for range 100 {
		var a, b unix.Timespec
		require.NoError(t, unix.ClockGettime(unix.CLOCK_REALTIME_COARSE, &a))
		_, err1 := f.WriteAt(other, tickOff)
		_, err2 := f.WriteAt(orig, tickOff)
		require.NoError(t, unix.ClockGettime(unix.CLOCK_REALTIME_COARSE, &b))
		require.NoError(t, err1)
		require.NoError(t, err2)
		if a == b {
			inOneTick = true
			break
		}
	}
	require.True(t, inOneTick, "never fitted two writes into one tick of the coarse clock")
	readDuring := agentReadBytes(t, src) - before
	var direct Point
	require.Eventually(t, func() bool {
		for _, p := range points() {
			if p.ID > quiet.ID && p.Method != "tracked-freeze" {
				direct = p
				return true
			}
		}
		return false
	}, 90*time.Second, 200*time.Millisecond, "no direct-read point after the punched hole")
	t.Logf("point %d after the hole (%s, %s), %s after the punch: %s; the agent had read %d MiB when the two writes came, %d MiB in all",
		direct.ID, direct.Method, direct.Consistency, time.Since(punched).Round(time.Millisecond), direct.Reason, readDuring>>20, (agentReadBytes(t, src)-before)>>20)
	require.Contains(t, src.Proc.Output(), "space was punched")
	require.Equal(t, "inconsistent", direct.Consistency, "two writes during the read, undone in one tick, were not seen")
	require.Contains(t, direct.Reason, "the image was written while it was read")

	// The next point is a tracked freeze again, and holds the hole and the
	// restored block.
	var next Point
	require.Eventually(t, func() bool {
		for _, p := range points() {
			if p.ID > direct.ID {
				next = p
				return true
			}
		}
		return false
	}, 60*time.Second, 200*time.Millisecond, "no point after the direct read")
	require.Equal(t, "crash-consistent", next.Consistency, next.Reason)
	t.Logf("point %d (%s): %s", next.ID, next.Method, next.Reason)
	exportAndCheck(next, log, []bigEdit{{off: holeOff, data: make([]byte, holeLen)}})
	t.Logf("total %s", time.Since(began).Round(time.Second))
}
