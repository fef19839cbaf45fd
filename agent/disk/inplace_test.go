package disk

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// inplaceBlock is the unit the crash tests reason about: a 4 KiB page, the
// granularity at which a killed process's write can be torn.
const inplaceBlock = 4096

// ipOp is one write (or zero when data is nil) of the generated sequence.
type ipOp struct {
	off  int64
	n    int64
	zero bool
	seed uint64
}

func (o ipOp) data() []byte {
	if o.zero {
		return make([]byte, o.n)
	}
	r := rand.New(rand.NewPCG(o.seed, 7))
	b := make([]byte, o.n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// genOps returns n block-aligned writes of 1..3 blocks and some zeros.
func genOps(seed uint64, size int64, n int) []ipOp {
	r := rand.New(rand.NewPCG(seed, 1))
	blocks := size / inplaceBlock
	ops := make([]ipOp, n)
	for i := range ops {
		k := int64(1 + r.IntN(3))
		b := r.Int64N(blocks - k + 1)
		ops[i] = ipOp{off: b * inplaceBlock, n: k * inplaceBlock, zero: r.IntN(7) == 0, seed: r.Uint64()}
	}
	return ops
}

func (o ipOp) apply(w BlockWriter) error {
	if o.zero {
		return w.Zero(o.off, o.n)
	}
	_, err := w.WriteAt(o.data(), o.off)
	return err
}

// ipVariant is a kind of home image the tests write into.
type ipVariant struct {
	name    string
	format  string   // qemu-img -O format
	options []string // qemu-img convert options
	text    bool     // fill the base with compressible text, not writeImage's mix
	sparse  bool     // a base with data in its first MiB only: the rest unallocated
}

var ipVariants = []ipVariant{
	{"raw", "raw", nil, false, false},
	{"qcow2-v3-4k", "qcow2", []string{"-o", "cluster_size=4096"}, false, false},
	{"qcow2-v2-4k", "qcow2", []string{"-o", "compat=0.10,cluster_size=4096"}, false, false},
	{"qcow2-v3-compressed", "qcow2", []string{"-c"}, false, false},
	{"qcow2-v3-compressed-4k", "qcow2", []string{"-c", "-o", "cluster_size=4096"}, true, false},
	{"qcow2-v3-512-refcount64", "qcow2", []string{"-o", "cluster_size=512,refcount_bits=64"}, false, false},
	{"qcow2-v3-prealloc-metadata", "qcow2", []string{"-o", "preallocation=metadata"}, false, false},
	{"vhdx-dynamic", "vhdx", []string{"-o", "block_size=1M"}, false, false},
	{"vhdx-fixed", "vhdx", []string{"-o", "subformat=fixed,block_size=1M"}, false, false},
	{name: "vhdx-dynamic-sparse", format: "vhdx", options: []string{"-o", "block_size=1M"}, sparse: true},
}

func variant(name string) ipVariant {
	for _, v := range ipVariants {
		if v.name == name {
			return v
		}
	}
	panic("no variant " + name)
}

// homeImage writes a seeded raw image (data, zero runs, holes) and
// converts it to the variant's format; it returns the image and the bytes
// the test keeps.
func homeImage(t *testing.T, dir string, v ipVariant, size int64, seed uint64) (string, []byte) {
	t.Helper()
	raw := filepath.Join(dir, "base.raw")
	if v.text {
		r := rand.New(rand.NewPCG(seed, 3))
		var b bytes.Buffer
		for int64(b.Len()) < size {
			b.WriteString(words[r.IntN(len(words))] + " ")
		}
		require.NoError(t, os.WriteFile(raw, b.Bytes()[:size], 0o600))
	} else {
		writeImage(t, raw, imageSpec{size: size, seed: seed, sparseOnly: v.sparse, dataAt: []int64{0}})
	}
	want, err := os.ReadFile(raw)
	require.NoError(t, err)
	img := filepath.Join(dir, "home."+v.name)
	args := append([]string{"convert", "-f", "raw", "-O", v.format}, v.options...)
	run(t, needTool(t, "qemu-img"), append(args, raw, img)...)
	return img, want
}

// qemuCheck runs qemu-img check and returns its exit code (0 clean,
// 2 corruption, 3 leaks only) and output.
func qemuCheck(t *testing.T, v ipVariant, img string) (int, string) {
	t.Helper()
	if v.format == "raw" {
		return 0, ""
	}
	out, err := exec.Command(needTool(t, "qemu-img"), "check", "-f", v.format, img).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	require.NoError(t, err, "%s", out)
	return 0, string(out)
}

// guestBytes converts the image to raw with qemu-img and returns it.
func guestBytes(t *testing.T, v ipVariant, img string) []byte {
	t.Helper()
	out := img + ".check.raw"
	run(t, needTool(t, "qemu-img"), "convert", "-U", "-f", v.format, "-O", "raw", img, out)
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	require.NoError(t, os.Remove(out))
	return b
}

func TestInPlaceRandomWritesMatchQemu(t *testing.T) {
	qemuImg := needTool(t, "qemu-img")
	const size = 3 << 20
	for i, v := range ipVariants {
		t.Run(v.name, func(t *testing.T) {
			dir := t.TempDir()
			img, want := homeImage(t, dir, v, size, uint64(100+i))
			w, err := OpenInPlace(img, InPlaceOptions{Logger: testLogger(t)})
			require.NoError(t, err)
			require.Equal(t, int64(size), w.Size())
			for _, op := range genOps(uint64(i), size, 200) {
				require.NoError(t, op.apply(w))
				copy(want[op.off:], op.data())
			}
			// Unaligned writes and zeros, across cluster boundaries.
			r := rand.New(rand.NewPCG(uint64(i), 9))
			for range 40 {
				off := r.Int64N(size - 70000)
				n := 1 + r.Int64N(70000)
				if r.IntN(3) == 0 {
					require.NoError(t, w.Zero(off, n))
					clear(want[off : off+n])
					continue
				}
				p := make([]byte, n)
				for j := range p {
					p[j] = byte(r.Uint32())
				}
				_, err := w.WriteAt(p, off)
				require.NoError(t, err)
				copy(want[off:], p)
			}
			require.NoError(t, w.Sync())
			_, err = w.WriteAt([]byte{1}, size)
			require.ErrorIs(t, err, ErrOutOfRange)
			require.NoError(t, w.Close())

			code, out := qemuCheck(t, v, img)
			require.Equal(t, 0, code, "qemu-img check not clean:\n%s", out)
			ref := filepath.Join(dir, "want.raw")
			require.NoError(t, os.WriteFile(ref, want, 0o600))
			run(t, qemuImg, "compare", "-f", v.format, "-F", "raw", img, ref)
		})
	}
}

// Child side of the crash tests: applies the ops to the image named in the
// environment, printing the index of each completed op, and kills itself
// at a named failpoint when asked.
func TestInPlaceChild(t *testing.T) {
	img := os.Getenv("FERRY_INPLACE_CHILD_IMAGE")
	if img == "" {
		return // only a helper process for the in-place crash tests
	}
	seed, _ := strconv.ParseUint(os.Getenv("FERRY_INPLACE_CHILD_SEED"), 10, 64)
	size, _ := strconv.ParseInt(os.Getenv("FERRY_INPLACE_CHILD_SIZE"), 10, 64)
	nops, _ := strconv.Atoi(os.Getenv("FERRY_INPLACE_CHILD_OPS"))
	failStep := os.Getenv("FERRY_INPLACE_CHILD_FAILSTEP")
	failAt, _ := strconv.Atoi(os.Getenv("FERRY_INPLACE_CHILD_FAILAT"))
	out := bufio.NewWriter(os.Stdout)
	seen := 0
	opts := InPlaceOptions{Failpoint: func(step string) {
		if step != failStep {
			return
		}
		if seen++; seen == failAt {
			fmt.Fprintf(out, "failpoint %s\n", step)
			out.Flush()
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}}
	w, err := OpenInPlace(img, opts)
	if err != nil {
		fmt.Fprintf(out, "error %v\n", err)
		out.Flush()
		os.Exit(3)
	}
	fmt.Fprintln(out, "open")
	out.Flush()
	for i, op := range genOps(seed, size, nops) {
		if err := op.apply(w); err != nil {
			fmt.Fprintf(out, "error %v\n", err)
			out.Flush()
			os.Exit(3)
		}
		fmt.Fprintf(out, "done %d\n", i)
		out.Flush()
	}
	if err := w.Close(); err != nil {
		os.Exit(3)
	}
	fmt.Fprintln(out, "end")
	out.Flush()
	os.Exit(0)
}

// crashRun starts the child on img and kills it with SIGKILL after it
// reported killAfter completed ops (killAfter < 0: let it run or die at
// its failpoint). It returns the number of ops completed, whether the
// child died by SIGKILL, and the failpoint it reported.
func crashRun(t *testing.T, img string, seed uint64, size int64, nops, killAfter int, failStep string, failAt int) (done int, killed bool, failpoint string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestInPlaceChild$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		"FERRY_INPLACE_CHILD_IMAGE="+img,
		fmt.Sprint("FERRY_INPLACE_CHILD_SEED=", seed),
		fmt.Sprint("FERRY_INPLACE_CHILD_SIZE=", size),
		fmt.Sprint("FERRY_INPLACE_CHILD_OPS=", nops),
		"FERRY_INPLACE_CHILD_FAILSTEP="+failStep,
		fmt.Sprint("FERRY_INPLACE_CHILD_FAILAT=", failAt))
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "done "):
			n, err := strconv.Atoi(strings.TrimPrefix(line, "done "))
			require.NoError(t, err)
			done = n + 1
			if killAfter >= 0 && done == killAfter {
				// Let the child run on for a random moment, so that the
				// kill lands anywhere inside the following ops.
				time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
				require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
				killAfter = -1
			}
		case strings.HasPrefix(line, "failpoint "):
			failpoint = strings.TrimPrefix(line, "failpoint ")
		case strings.HasPrefix(line, "error "):
			t.Fatalf("child failed: %s", line)
		case line == "open" && killAfter == 0:
			require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
			killAfter = -1
		}
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return done, true, failpoint
		}
	}
	require.NoError(t, err, "child: %s", stderr.String())
	return done, false, failpoint
}

// checkAfterCrash verifies an image after the writer was killed having
// completed done ops: qemu-img check reports no corruption, reopening
// repairs any leak so check is clean, and every block holds the value of
// the last completed op, except the blocks of the op in flight, which
// hold either their old or their new value. A VHDX killed with its log
// active is first read through this package's replaying reader and
// replayed by qemu (`qemu-img check -r all`) on a copy. It returns the
// exit code of the first check (3 = leaks) and whether a VHDX log had to
// be replayed.
func checkAfterCrash(t *testing.T, v ipVariant, img string, base []byte, ops []ipOp, done int) (code int, replayed bool) {
	t.Helper()
	want := bytes.Clone(base)
	for _, op := range ops[:done] {
		copy(want[op.off:], op.data())
	}
	var inflight *ipOp
	if done < len(ops) {
		inflight = &ops[done]
	}
	if v.format == "vhdx" && vhdxLogPending(t, img) {
		replayed = true
		src, err := Open(img, OpenOptions{})
		require.NoError(t, err)
		got := make([]byte, src.Size())
		_, err = src.ReadAt(got, 0)
		require.NoError(t, err)
		require.NoError(t, src.Close())
		requireOldOrNew(t, got, want, inflight, done, "this package's log replay")
		cp := img + ".qemu"
		b, err := os.ReadFile(img)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(cp, b, 0o600))
		run(t, needTool(t, "qemu-img"), "check", "-q", "-r", "all", "-f", "vhdx", cp)
		c, out := qemuCheck(t, v, cp)
		require.Equal(t, 0, c, "qemu-img check after qemu replayed our log:\n%s", out)
		requireOldOrNew(t, guestBytes(t, v, cp), want, inflight, done, "qemu's log replay")
	} else {
		var out string
		code, out = qemuCheck(t, v, img)
		require.Contains(t, []int{0, 3}, code, "qemu-img check after the crash found corruption:\n%s", out)
	}
	w, err := OpenInPlace(img, InPlaceOptions{Logger: testLogger(t)})
	require.NoError(t, err)
	require.NoError(t, w.Close())
	code2, out2 := qemuCheck(t, v, img)
	require.Equal(t, 0, code2, "qemu-img check after reopening is not clean:\n%s", out2)
	requireOldOrNew(t, guestBytes(t, v, img), want, inflight, done, "after reopening")
	return code, replayed
}

// vhdxLogPending reports whether the current VHDX header names a log.
func vhdxLogPending(t *testing.T, img string) bool {
	t.Helper()
	b, err := os.ReadFile(img)
	require.NoError(t, err)
	h1, err1 := parseVHDXHeader(b[vhdxHeaderOff1:])
	h2, err2 := parseVHDXHeader(b[vhdxHeaderOff2:])
	require.False(t, err1 != nil && err2 != nil, "both VHDX headers invalid")
	h := h1
	if err1 != nil || (err2 == nil && h2.seq > h1.seq) {
		h = h2
	}
	return !h.logGUID.isZero()
}

func requireOldOrNew(t *testing.T, got, want []byte, inflight *ipOp, done int, what string) {
	t.Helper()
	require.Len(t, got, len(want))
	for b := int64(0); b < int64(len(want)); b += inplaceBlock {
		g, w := got[b:b+inplaceBlock], want[b:b+inplaceBlock]
		if bytes.Equal(g, w) {
			continue
		}
		if inflight != nil && b >= inflight.off && b < inflight.off+inflight.n {
			nw := inflight.data()[b-inflight.off : b-inflight.off+inplaceBlock]
			if bytes.Equal(g, nw) {
				continue
			}
		}
		t.Fatalf("%s: block at %d after %d completed ops holds neither the old nor the new value (first diff at byte %d)",
			what, b, done, firstDiff(g, w))
	}
}

var crashVariants = []ipVariant{variant("raw"), variant("qcow2-v3-4k"), variant("qcow2-v2-4k"),
	variant("qcow2-v3-compressed"), variant("vhdx-dynamic-sparse"), variant("vhdx-fixed")}

func TestInPlaceKillRandomMoments(t *testing.T) {
	needTool(t, "qemu-img")
	const size, nops, rounds = 4 << 20, 64, 24
	r := rand.New(rand.NewPCG(42, 42))
	leaks, replays, killedMid := 0, 0, 0
	for round := range rounds {
		v := crashVariants[round%len(crashVariants)]
		dir := t.TempDir()
		img, base := homeImage(t, dir, v, size, uint64(round))
		seed := r.Uint64()
		killAfter := r.IntN(nops - 16)
		done, killed, _ := crashRun(t, img, seed, size, nops, killAfter, "", 0)
		if killed && done < nops {
			killedMid++
		}
		code, replayed := checkAfterCrash(t, v, img, base, genOps(seed, size, nops), done)
		if code == 3 {
			leaks++
		}
		if replayed {
			replays++
		}
		t.Logf("round %d %s: killed=%v after %d of %d ops", round, v.name, killed, done, nops)
	}
	t.Logf("%d of %d rounds killed mid-sequence; %d left qcow2 leaks that reopening repaired; %d left a VHDX log to replay",
		killedMid, rounds, leaks, replays)
	require.GreaterOrEqual(t, killedMid, 20, "the child finished before the kill too often: the test did not test crashes")
}

func TestInPlaceKillAtFailpoints(t *testing.T) {
	needTool(t, "qemu-img")
	const size, nops = 4 << 20, 40
	cases := []struct {
		step  string
		v     ipVariant
		leaks bool // a crash here leaves counted, unreferenced clusters
		at    int  // kill at this occurrence of the step
		log   bool // a crash here leaves a VHDX log to replay
	}{
		{InPlaceStepData, ipVariants[1], false, 3, false},
		{InPlaceStepRefcount, ipVariants[1], true, 3, false},
		{InPlaceStepTable, ipVariants[1], false, 3, false},
		{InPlaceStepData, ipVariants[2], false, 3, false},
		{InPlaceStepRefcount, ipVariants[2], true, 3, false},
		{InPlaceStepTable, ipVariants[2], false, 3, false},
		{InPlaceStepRefcount, ipVariants[3], true, 2, false},
		{InPlaceStepFree, ipVariants[4], false, 3, false},
		{InPlaceStepVHDXData, variant("vhdx-dynamic-sparse"), false, 2, false},
		{InPlaceStepVHDXLog, variant("vhdx-dynamic-sparse"), false, 2, true},
		{InPlaceStepVHDXLogSync, variant("vhdx-dynamic-sparse"), false, 2, true},
		{InPlaceStepVHDXMetadata, variant("vhdx-dynamic-sparse"), false, 2, true},
	}
	// Steps after an op's commit point. A process kill keeps the page
	// cache, so a written but unflushed VHDX log entry is committed too.
	committed := map[string]bool{InPlaceStepTable: true, InPlaceStepFree: true,
		InPlaceStepVHDXLog: true, InPlaceStepVHDXLogSync: true, InPlaceStepVHDXMetadata: true}
	for i, c := range cases {
		t.Run(c.v.name+"/"+c.step, func(t *testing.T) {
			dir := t.TempDir()
			img, base := homeImage(t, dir, c.v, size, uint64(i))
			seed := uint64(1000 + i)
			done, killed, fp := crashRun(t, img, seed, size, nops, -1, c.step, c.at)
			require.True(t, killed, "the child was not killed at %s", c.step)
			require.Equal(t, c.step, fp)
			if committed[c.step] {
				done++ // the op in flight reached its commit point: all of it is new
			}
			code, replayed := checkAfterCrash(t, c.v, img, base, genOps(seed, size, nops), done)
			require.Equal(t, c.log, replayed, "VHDX log pending after a crash at %s", c.step)
			if c.leaks {
				require.Equal(t, 3, code, "a crash at %s should leave leaked clusters (proving the step was reached)", c.step)
			} else {
				require.Equal(t, 0, code)
			}
		})
	}
}

func TestInPlaceRefusals(t *testing.T) {
	qemuImg := needTool(t, "qemu-img")
	dir := t.TempDir()
	mk := func(name string, args ...string) string {
		p := filepath.Join(dir, name)
		run(t, qemuImg, append(append([]string{"create", "-q"}, args[:len(args)-1]...), p, args[len(args)-1])...)
		return p
	}
	base := mk("base.qcow2", "-f", "qcow2", "1M")
	cases := []struct {
		name string
		path string
		want error
	}{
		{"vmdk", mk("d.vmdk", "-f", "vmdk", "1M"), ErrUnsupported},
		{"vhd", mk("d.vhd", "-f", "vpc", "1M"), ErrUnsupported},
		{"qcow2 with backing file", mk("child.qcow2", "-f", "qcow2", "-F", "qcow2", "-b", base, "1M"), ErrUnsupported},
	}
	snap := mk("snap.qcow2", "-f", "qcow2", "1M")
	run(t, qemuImg, "snapshot", "-c", "s1", snap)
	cases = append(cases, struct {
		name string
		path string
		want error
	}{"qcow2 with snapshot", snap, ErrUnsupported})
	bitmap := mk("bitmap.qcow2", "-f", "qcow2", "1M")
	run(t, qemuImg, "bitmap", "--add", bitmap, "b0")
	cases = append(cases, struct {
		name string
		path string
		want error
	}{"qcow2 with a persistent bitmap", bitmap, ErrUnsupported},
		struct {
			name string
			path string
			want error
		}{"qcow2 with 1-bit refcounts", mk("rc1.qcow2", "-f", "qcow2", "-o", "refcount_bits=1", "1M"), ErrUnsupported})
	dirty := mk("dirty.qcow2", "-f", "qcow2", "1M")
	f, err := os.OpenFile(dirty, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{0, 0, 0, 0, 0, 0, 0, 1}, 72) // incompatible feature bit 0: dirty
	require.NoError(t, err)
	require.NoError(t, f.Close())
	cases = append(cases, struct {
		name string
		path string
		want error
	}{"dirty qcow2", dirty, ErrDirty})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, err := os.ReadFile(c.path)
			require.NoError(t, err)
			_, err = OpenInPlace(c.path, InPlaceOptions{})
			require.ErrorIs(t, err, c.want)
			var fe *FormatError
			require.ErrorAs(t, err, &fe)
			t.Log(err)
			after, err := os.ReadFile(c.path)
			require.NoError(t, err)
			require.Equal(t, before, after, "a refused image was modified")
		})
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

// A log entry that wraps past the end of the circular log is replayed by
// this package's reader and by qemu. The failpoint copies the file at the
// moment the entry is flushed and the BAT not yet updated: that copy is
// what a crash there leaves.
func TestInPlaceVHDXLogEntryWraps(t *testing.T) {
	qemuImg := needTool(t, "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, "home.vhdx")
	run(t, qemuImg, "create", "-q", "-f", "vhdx", "-o", "block_size=1M", img, "64M")
	crash := filepath.Join(dir, "crash.vhdx")
	var w *vhdxInPlace
	snapshots := 0
	bw, err := OpenInPlace(img, InPlaceOptions{Failpoint: func(step string) {
		if step != InPlaceStepVHDXLogSync {
			return
		}
		b, err := os.ReadFile(img)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(crash, b, 0o600))
		snapshots++
	}})
	require.NoError(t, err)
	w = bw.(*vhdxInPlace)
	// Put the head 4 KiB before the end, so the next entry (a header
	// sector and one data sector) wraps.
	w.logHead = int64(w.h.logLength) - vhdxLogSector
	p := bytes.Repeat([]byte("wrapped!"), 512)
	_, err = w.WriteAt(p, 5<<20)
	require.NoError(t, err)
	require.Equal(t, 1, snapshots)
	require.Equal(t, int64(vhdxLogSector), w.logHead, "the entry did not wrap")
	require.NoError(t, w.Close())

	require.True(t, vhdxLogPending(t, crash), "the crash copy has no log to replay")
	want := make([]byte, 64<<20)
	copy(want[5<<20:], p)
	src, err := Open(crash, OpenOptions{})
	require.NoError(t, err)
	got := make([]byte, src.Size())
	_, err = src.ReadAt(got, 0)
	require.NoError(t, err)
	require.NoError(t, src.Close())
	require.True(t, bytes.Equal(want, got), "this package's replay of a wrapped entry: first diff at %d", firstDiff(got, want))
	run(t, qemuImg, "check", "-q", "-r", "all", "-f", "vhdx", crash)
	v := variant("vhdx-dynamic")
	code, out := qemuCheck(t, v, crash)
	require.Equal(t, 0, code, "%s", out)
	require.True(t, bytes.Equal(want, guestBytes(t, v, crash)), "qemu's replay of a wrapped entry differs")
	code, out = qemuCheck(t, v, img)
	require.Equal(t, 0, code, "%s", out)
	require.True(t, bytes.Equal(want, guestBytes(t, v, img)))
}

// An autoclear feature bit this writer does not maintain is cleared on
// open, as qcow2.txt asks of a writer that modifies the image.
func TestInPlaceQCOW2ClearsUnknownAutoclear(t *testing.T) {
	qemuImg := needTool(t, "qemu-img")
	img := filepath.Join(t.TempDir(), "home.qcow2")
	run(t, qemuImg, "create", "-q", "-f", "qcow2", img, "1M")
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{0, 0, 0, 0, 0, 0, 0, 1 << 5}, 88) // autoclear bit 5: unknown
	require.NoError(t, err)
	require.NoError(t, f.Close())
	w, err := OpenInPlace(img, InPlaceOptions{})
	require.NoError(t, err)
	_, err = w.WriteAt([]byte("home"), 4096)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	b, err := os.ReadFile(img)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 8), b[88:96], "autoclear bits not cleared")
	code, out := qemuCheck(t, variant("qcow2-v3-4k"), img)
	require.Equal(t, 0, code, "%s", out)
}

func TestInPlaceRefusesDifferencingVHDX(t *testing.T) {
	fx := makeDifferencingVHDX(t, needQemu(t), func(g string) string { return "{" + strings.ToLower(g) + "}" })
	before, err := os.ReadFile(fx.child)
	require.NoError(t, err)
	_, err = OpenInPlace(fx.child, InPlaceOptions{})
	require.ErrorIs(t, err, ErrUnsupported)
	t.Log(err)
	after, err := os.ReadFile(fx.child)
	require.NoError(t, err)
	require.Equal(t, before, after, "a refused differencing VHDX was modified")
}
