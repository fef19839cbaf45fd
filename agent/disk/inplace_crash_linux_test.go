//go:build linux

package disk

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
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

// The crash tests re-execute the test binary as the writer and kill it
// with SIGKILL; they run where qemu-img does (Linux).

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
	// Rounds go on until 20 kills landed mid-sequence: on a loaded machine
	// the child sometimes finishes before its kill arrives, and such a
	// round tests nothing (at most 72 rounds).
	const size, nops, wantKills, maxRounds = 4 << 20, 64, 20, 72
	r := rand.New(rand.NewPCG(42, 42))
	leaks, replays, killedMid, rounds := 0, 0, 0, 0
	for round := 0; killedMid < wantKills && round < maxRounds; round++ {
		rounds++
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
	require.GreaterOrEqual(t, killedMid, wantKills, "the child finished before the kill too often: the test did not test crashes")
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

// A log entry that wraps past the end of the circular log is replayed by
// this package's reader and by qemu. The failpoint copies the file at the
// moment the entry is flushed and the BAT not yet updated: that copy is
// what a crash there leaves.
func TestInPlaceVHDXLogEntryWraps(t *testing.T) {
	qemuImg := needTool(t, "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, "home.vhdx")
	run(t, qemuImg, "create", "-q", "-f", "vhdx", "-o", "block_size=1M", img, "16M")
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
	want := make([]byte, 16<<20)
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
