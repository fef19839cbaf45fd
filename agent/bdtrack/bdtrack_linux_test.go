package bdtrack

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/ferrydr/ferry/internal/testenv"
	"golang.org/x/sys/unix"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// loopDev attaches a sparse file of size bytes in dir (t.TempDir if "") to
// a loop device, detached at cleanup.
func loopDev(t *testing.T, dir string, size int64) string {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "losetup")
	if dir == "" {
		dir = t.TempDir()
	}
	img, err := os.CreateTemp(dir, "bdtrack-*.img")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(img.Name()) })
	if err := img.Truncate(size); err != nil {
		t.Fatal(err)
	}
	img.Close()
	dev := strings.TrimSpace(testenv.Run(t, "losetup", "-f", "--show", img.Name()))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// privateBPFFS mounts a bpffs of the test's own, so pins never meet the
// machine's or another test's; unmounting it drops whatever is pinned.
func privateBPFFS(t *testing.T) Options {
	t.Helper()
	testenv.RequireRoot(t)
	dir := t.TempDir()
	testenv.Run(t, "mount", "-t", "bpf", "bpf", dir)
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return Options{BPFFS: dir}
}

func openT(t *testing.T, dev string, bs int, opts Options) *Tracker {
	t.Helper()
	tr, err := Open(dev, bs, opts)
	if errors.Is(err, ErrUnsupported) {
		testenv.Require(t, false, err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Remove() })
	return tr
}

// alignedBuf is page-aligned memory for O_DIRECT, filled with fill.
func alignedBuf(t testing.TB, n int, fill byte) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	for i := range b {
		b[i] = fill
	}
	return b
}

func openDirect(t testing.TB, dev string) *os.File {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func pwrite(t testing.TB, f *os.File, b []byte, off int64) {
	if n, err := f.WriteAt(b, off); err != nil || n != len(b) {
		t.Fatalf("pwrite %d bytes at %d: %d, %v", len(b), off, n, err)
	}
}

// rangeIoctl issues BLKDISCARD or BLKZEROOUT on [off, off+n).
func rangeIoctl(f *os.File, req uint, off, n uint64) error {
	r := [2]uint64{off, n}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), uintptr(req), uintptr(unsafe.Pointer(&r))); e != 0 {
		return e
	}
	return nil
}

func span(from, to uint64) []uint64 {
	var out []uint64
	for b := from; b <= to; b++ {
		out = append(out, b)
	}
	return out
}

func sameBlocks(t *testing.T, what string, got []uint64, want []uint64) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s: dirty blocks %v, want %v", what, got, want)
	}
}

// TestExactBlocks: O_DIRECT writes, a discard and a zero-out at known
// offsets give exactly their 64 KiB blocks, a read and a flush nothing;
// another device's writes are not seen (but are seen by that device's own
// tracker).
func TestExactBlocks(t *testing.T) {
	opts := privateBPFFS(t)
	dev := loopDev(t, "", 64*mib)
	other := loopDev(t, "", 64*mib)
	tr := openT(t, dev, 64*kib, opts)
	trOther := openT(t, other, 64*kib, opts)
	if !tr.Fresh || !errors.Is(tr.FreshReason, ErrNotPinned) {
		t.Fatalf("first Open: Fresh %v (%v), want fresh, ErrNotPinned", tr.Fresh, tr.FreshReason)
	}
	if d, err := tr.Cut(); err != nil || d.Count() != 0 {
		t.Fatalf("Cut before any write: %v blocks, %v; want none", d.Blocks(), err)
	}

	f := openDirect(t, dev)
	pwrite(t, f, alignedBuf(t, 4*kib, 1), 200*kib)                        // block 3
	pwrite(t, f, alignedBuf(t, 3*mib, 2), 10*mib)                         // blocks 160..207
	pwrite(t, openDirect(t, other), alignedBuf(t, mib, 3), 0)             // other device, blocks 0..15
	if _, err := f.ReadAt(alignedBuf(t, 64*kib, 0), 50*mib); err != nil { // a read: block 800 stays clean
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil { // a flush: nothing
		t.Fatal(err)
	}
	want := append([]uint64{3}, span(160, 207)...)
	if err := rangeIoctl(f, unix.BLKDISCARD, 32*mib, mib); err != nil {
		t.Logf("BLKDISCARD: %v (not checked)", err)
	} else {
		want = append(want, span(512, 527)...)
	}
	if err := rangeIoctl(f, unix.BLKZEROOUT, 40*mib, 64*kib); err != nil {
		t.Logf("BLKZEROOUT: %v (not checked)", err)
	} else {
		want = append(want, 640)
	}
	d, err := tr.Cut()
	if err != nil {
		t.Fatal(err)
	}
	sameBlocks(t, dev, d.Blocks(), want)
	if d.Overflow || d.NumBlocks != 1024 || d.BlockSize != 64*kib {
		t.Fatalf("Dirty: overflow %v, %d blocks of %d", d.Overflow, d.NumBlocks, d.BlockSize)
	}
	dOther, err := trOther.Cut()
	if err != nil {
		t.Fatal(err)
	}
	sameBlocks(t, other, dOther.Blocks(), span(0, 15))

	st, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats: %+v", st)
	if st.Queued == 0 || st.RqCompleted == 0 {
		t.Fatalf("stats %+v: want block_bio_queue and block_rq_complete to have fired for a loop device", st)
	}
}

const fsIocFiemap = 0xC020660B // _IOWR('f', 11, struct fiemap)

// fiemap returns the physical byte extents of a file.
func fiemap(t *testing.T, f *os.File) [][2]uint64 {
	t.Helper()
	const n = 64
	buf := make([]byte, 32+56*n)
	*(*uint64)(unsafe.Pointer(&buf[8])) = ^uint64(0) // fm_length
	*(*uint32)(unsafe.Pointer(&buf[16])) = 1         // FIEMAP_FLAG_SYNC
	*(*uint32)(unsafe.Pointer(&buf[24])) = n         // fm_extent_count
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		t.Fatalf("FIEMAP: %v", e)
	}
	var out [][2]uint64
	for i := range int(*(*uint32)(unsafe.Pointer(&buf[20]))) {
		e := buf[32+56*i:]
		out = append(out, [2]uint64{*(*uint64)(unsafe.Pointer(&e[8])), *(*uint64)(unsafe.Pointer(&e[16]))})
	}
	return out
}

// TestFilesystemWrites: a file written and fsynced through ext4 on the
// device dirties the blocks FIEMAP says it occupies.
func TestFilesystemWrites(t *testing.T) {
	opts := privateBPFFS(t)
	testenv.RequireTool(t, "mkfs.ext4")
	dev := loopDev(t, "", 128*mib)
	testenv.Run(t, "mkfs.ext4", "-q", "-F", dev)
	tr := openT(t, dev, 4*kib, opts)
	mnt := t.TempDir()
	testenv.Run(t, "mount", dev, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	if _, err := tr.Cut(); err != nil { // drop the mount's own writes
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(mnt, "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 5*mib+123)
	for i := range buf {
		buf[i] = byte(i)
	}
	if _, err := f.Write(buf); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	d, err := tr.Cut()
	if err != nil {
		t.Fatal(err)
	}
	ext := fiemap(t, f)
	if len(ext) == 0 {
		t.Fatal("FIEMAP found no extents for a 5 MiB fsynced file")
	}
	var fileBlocks int
	for _, e := range ext {
		for b := e[0] / (4 * kib); b < (e[0]+e[1]+4*kib-1)/(4*kib); b++ {
			fileBlocks++
			if !d.Has(b) {
				t.Fatalf("block %d of the file (extent %v) not dirty; %d dirty blocks", b, e, d.Count())
			}
		}
	}
	if fileBlocks < (5*mib)/(4*kib) || d.Count() < fileBlocks {
		t.Fatalf("%d file blocks, %d dirty", fileBlocks, d.Count())
	}
	t.Logf("%d extents, %d file blocks, %d dirty blocks (the rest: journal, inode, bitmaps)", len(ext), fileBlocks, d.Count())
}

// TestCutTwice: a cut with no writes since the last is empty; writes
// between two cuts are returned once.
func TestCutTwice(t *testing.T) {
	opts := privateBPFFS(t)
	dev := loopDev(t, "", 16*mib)
	tr := openT(t, dev, 4*kib, opts)
	f := openDirect(t, dev)
	pwrite(t, f, alignedBuf(t, 8*kib, 1), 1*mib)
	d1, err := tr.Cut()
	if err != nil {
		t.Fatal(err)
	}
	sameBlocks(t, "first cut", d1.Blocks(), []uint64{256, 257})
	d2, err := tr.Cut()
	if err != nil {
		t.Fatal(err)
	}
	sameBlocks(t, "second cut, no writes", d2.Blocks(), nil)
	pwrite(t, f, alignedBuf(t, 4*kib, 2), 2*mib)
	d3, err := tr.Cut()
	if err != nil {
		t.Fatal(err)
	}
	sameBlocks(t, "third cut", d3.Blocks(), []uint64{512})
	d4, err := tr.Cut()
	if err != nil {
		t.Fatal(err)
	}
	sameBlocks(t, "fourth cut", d4.Blocks(), nil)
}

// TestPinning: Close leaves the tracker pinned and marking (as across an
// agent restart); Open reuses it with its bits; mismatches, a missing link
// and a resize are reported; Remove makes the next Open fresh.
func TestPinning(t *testing.T) {
	opts := privateBPFFS(t)
	dir := t.TempDir()
	dev := loopDev(t, dir, 16*mib)
	f := openDirect(t, dev)

	tr := openT(t, dev, 64*kib, opts)
	pwrite(t, f, alignedBuf(t, 4*kib, 1), 0)
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	pwrite(t, f, alignedBuf(t, 4*kib, 1), 5*mib) // while no process holds it
	if _, err := tr.Cut(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Cut after Close: %v, want ErrClosed", err)
	}

	tr2 := openT(t, dev, 64*kib, opts)
	if tr2.Fresh {
		t.Fatalf("reopen: Fresh (%v), want the pinned tracker", tr2.FreshReason)
	}
	d, err := tr2.Cut()
	if err != nil {
		t.Fatal(err)
	}
	sameBlocks(t, "after reopen", d.Blocks(), []uint64{0, 80})

	if _, err := Open(dev, 4*kib, opts); !errors.Is(err, ErrMismatch) {
		t.Fatalf("Open with another block size: %v, want ErrMismatch", err)
	}
	tr2.Close()

	// A link unpinned (the program detached): reopened, but fresh.
	if err := os.Remove(filepath.Join(opts.BPFFS, "ferry", strings.TrimPrefix(tr2.pinDir, filepath.Join(opts.BPFFS, "ferry")+"/"), "link_block_rq_complete")); err != nil {
		t.Fatal(err)
	}
	tr3 := openT(t, dev, 64*kib, opts)
	if !tr3.Fresh || !errors.Is(tr3.FreshReason, ErrDetached) {
		t.Fatalf("Open with a link gone: Fresh %v (%v), want ErrDetached", tr3.Fresh, tr3.FreshReason)
	}
	pwrite(t, f, alignedBuf(t, 4*kib, 1), 6*mib)
	if d, err := tr3.Cut(); err != nil || !d.Has(96) {
		t.Fatalf("after reattaching: %v, %v; want block 96", d.Blocks(), err)
	}
	tr3.Close()
	if tr4 := openT(t, dev, 64*kib, opts); tr4.Fresh {
		t.Fatalf("Open after reattach: Fresh (%v)", tr4.FreshReason)
	} else {
		tr4.Close()
	}

	if err := RemovePinned(dev, opts); err != nil {
		t.Fatal(err)
	}
	tr5 := openT(t, dev, 64*kib, opts)
	if !tr5.Fresh || !errors.Is(tr5.FreshReason, ErrNotPinned) {
		t.Fatalf("Open after Remove: Fresh %v (%v), want ErrNotPinned", tr5.Fresh, tr5.FreshReason)
	}
	if d, err := tr5.Cut(); err != nil || d.Count() != 0 {
		t.Fatalf("fresh tracker: %v, %v; want empty", d.Blocks(), err)
	}

	// Grow the device under an open tracker: Cut and Open report ErrResized.
	img := strings.TrimSpace(testenv.Run(t, "losetup", "-n", "-O", "BACK-FILE", dev))
	if err := os.Truncate(img, 32*mib); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, "losetup", "-c", dev)
	if _, err := tr5.Cut(); !errors.Is(err, ErrResized) {
		t.Fatalf("Cut after resize: %v, want ErrResized", err)
	}
	tr5.Close()
	if _, err := Open(dev, 64*kib, opts); !errors.Is(err, ErrResized) {
		t.Fatalf("Open after resize: %v, want ErrResized", err)
	}
}

// TestConcurrentCuts: a writer of 4 KiB O_DIRECT blocks, each block once
// in a random order with its sequence number, races cuts every few
// milliseconds; after each cut the test reads the blocks it returned, as
// a replica would. Every write is in the cut that started after it
// returned or an earlier one, none in a cut that finished before it began,
// the cuts hold nothing else, and the replica ends with every write's data:
// a block read while its write was in flight was returned again later.
func TestConcurrentCuts(t *testing.T) {
	opts := privateBPFFS(t)
	const size = 2 << 30 // sparse; 524288 blocks, more than the writer reaches
	const nblocks = size / (4 * kib)
	dev := loopDev(t, "", size)
	tr := openT(t, dev, 4*kib, opts)

	type write struct {
		block, seq    uint64
		cutsBefore    int64 // cuts finished before the write was issued
		cutsStartedBy int64 // cuts started when it returned
	}
	var cutsStarted, cutsDone atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var log []write
	var werr error
	f := openDirect(t, dev)
	buf := alignedBuf(t, 4*kib, 0)
	wg.Go(func() {
		order := rand.New(rand.NewPCG(1, 2)).Perm(nblocks)
		for seq, b := range order {
			select {
			case <-stop:
				return
			default:
			}
			w := write{block: uint64(b), cutsBefore: cutsDone.Load()}
			*(*uint64)(unsafe.Pointer(&buf[0])) = uint64(seq) + 1
			w.seq = uint64(seq) + 1
			if _, err := f.WriteAt(buf, int64(b)*4*kib); err != nil {
				werr = err
				return
			}
			w.cutsStartedBy = cutsStarted.Load()
			log = append(log, w)
			if seq%8 == 7 {
				// Leave the replica's reads time to keep up, so that cuts
				// come every few milliseconds.
				time.Sleep(500 * time.Microsecond)
			}
		}
	})
	firstSeen := map[uint64]int64{} // block -> number of the cut that first returned it
	seenTwice := 0
	replica := map[uint64]uint64{} // block -> sequence number + 1 read after the last cut that returned it
	rf := openDirect(t, dev)
	rbuf := alignedBuf(t, 4*kib, 0)
	cut := func() {
		n := cutsStarted.Add(1)
		d, err := tr.Cut()
		if err != nil {
			t.Fatal(err)
		}
		cutsDone.Store(n)
		if d.Overflow {
			t.Fatalf("cut %d: overflow", n)
		}
		for _, b := range d.Blocks() {
			if _, err := rf.ReadAt(rbuf, int64(b)*4*kib); err != nil {
				t.Fatal(err)
			}
			replica[b] = *(*uint64)(unsafe.Pointer(&rbuf[0]))
			if _, ok := firstSeen[b]; ok {
				seenTwice++
				continue
			}
			firstSeen[b] = n
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		cut()
		time.Sleep(time.Duration(1+cutsStarted.Load()%3) * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if werr != nil {
		t.Fatal(werr)
	}
	cut()
	if len(log) < 1000 || cutsStarted.Load() < 100 {
		t.Fatalf("only %d writes and %d cuts: the race was not exercised", len(log), cutsStarted.Load())
	}
	stale := 0
	for _, w := range log {
		n, ok := firstSeen[w.block]
		switch {
		case !ok:
			t.Fatalf("block %d, written between cut %d and cut %d, is in no cut", w.block, w.cutsBefore, w.cutsStartedBy+1)
		case n > w.cutsStartedBy+1:
			t.Fatalf("block %d returned before cut %d started, first seen in cut %d", w.block, w.cutsStartedBy+1, n)
		case n <= w.cutsBefore:
			t.Fatalf("block %d issued after cut %d finished, seen in cut %d", w.block, w.cutsBefore, n)
		case replica[w.block] != w.seq:
			stale++
		}
	}
	if seenTwice == 0 {
		// A write in flight at a flip is marked in both halves; with one
		// write nearly always in flight, some cut must have caught one.
		// This is the check that fails without the completion hook: the
		// replica check below cannot, on a loop device, which serves a
		// read queued after a write after that write (tried: with
		// block_rq_complete left out, no stale block in three runs).
		t.Fatalf("no block was returned twice in %d cuts: no write was in flight at a flip, or completions are not marked", cutsStarted.Load())
	}
	if stale > 0 {
		t.Fatalf("%d of %d blocks were read before their write landed and never returned again", stale, len(log))
	}
	if len(firstSeen) != len(log) {
		t.Fatalf("the cuts hold %d blocks, the writer wrote %d", len(firstSeen), len(log))
	}
	t.Logf("%d writes, each to its own block, %d cuts, none missed or late; %d blocks seen again in a later cut",
		len(log), cutsStarted.Load(), seenTwice)
}

// TestBound: a device needing a bigger bitmap than the bound is refused.
func TestBound(t *testing.T) {
	opts := privateBPFFS(t)
	dev := loopDev(t, "", 64*mib) // 16384 blocks of 4 KiB: 2048 bitmap bytes
	opts.MaxBitmapBytes = 2047
	if _, err := Open(dev, 4*kib, opts); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Open over the bound: %v, want ErrTooLarge", err)
	}
	opts.MaxBitmapBytes = 2048
	tr := openT(t, dev, 4*kib, opts)
	if tr.words != 256 {
		t.Fatalf("%d words, want 256", tr.words)
	}
}

// TestLargeRequests: a 1 GiB discard at 4 KiB blocks (4096 full words,
// through bpf_loop) is marked in full; a 3 GiB one at 512-byte blocks
// (98304 words, over MaxWordsPerEvent) is reported as an overflow.
func TestLargeRequests(t *testing.T) {
	opts := privateBPFFS(t)
	dev := loopDev(t, "", 4<<30)
	f := openDirect(t, dev)
	if err := rangeIoctl(f, unix.BLKDISCARD, 0, 4096); err != nil {
		testenv.Require(t, false, fmt.Sprintf("loop device without discard: %v", err))
	}

	tr := openT(t, dev, 4*kib, opts)
	if err := rangeIoctl(f, unix.BLKDISCARD, 4*kib, 1<<30); err != nil {
		t.Fatal(err)
	}
	d, err := tr.Cut()
	if err != nil {
		t.Fatal(err)
	}
	if d.Overflow || d.Count() != (1<<30)/(4*kib) || !d.Has(1) || !d.Has((1<<30)/(4*kib)) || d.Has(0) {
		t.Fatalf("1 GiB discard from 4 KiB: overflow %v, %d blocks (%v %v %v), want blocks 1..262144",
			d.Overflow, d.Count(), d.Has(0), d.Has(1), d.Has((1<<30)/(4*kib)))
	}
	if err := tr.Remove(); err != nil {
		t.Fatal(err)
	}

	tr = openT(t, dev, 512, opts)
	if err := rangeIoctl(f, unix.BLKDISCARD, 0, 3<<30); err != nil {
		t.Fatal(err)
	}
	d, err = tr.Cut()
	if err != nil {
		t.Fatal(err)
	}
	st, _ := tr.Stats()
	if !d.Overflow || st.Overflows == 0 {
		t.Fatalf("3 GiB discard at 512-byte blocks: overflow %v (stats %+v), %d blocks; want an overflow", d.Overflow, st, d.Count())
	}
	if d2, err := tr.Cut(); err != nil || d2.Overflow {
		t.Fatalf("the cut after an overflow: %v, %v; want it cleared", d2.Overflow, err)
	}
}

// TestWithoutBPF: a process that may not call bpf() (here: uid 65534,
// with unprivileged BPF disabled) gets ErrUnsupported from Open.
func TestWithoutBPF(t *testing.T) {
	if os.Getenv("BDTRACK_CHILD") == "1" {
		_, err := Open(os.Getenv("BDTRACK_DEV"), 4*kib, Options{})
		if !errors.Is(err, ErrUnsupported) {
			t.Fatalf("Open without bpf(): %v, want ErrUnsupported", err)
		}
		return
	}
	dev := loopDev(t, "", 16*mib) // the child can stat it but not open it
	// The child must be able to run the test binary: copy it somewhere
	// uid 65534 can read.
	dir, err := os.MkdirTemp("", "bdtrack-child-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bdtrack.test")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestWithoutBPF$", "-test.v")
	cmd.Env = append(os.Environ(), "BDTRACK_CHILD=1", "BDTRACK_DEV="+dev)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestWithoutBPF") {
		t.Fatalf("child as uid 65534: %v\n%s", err, out)
	}
}
