package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/workload"
)

// LoggedWrite is one write of the ordered writer.
type LoggedWrite struct {
	Disk   int
	Offset int64
	Seq    int
}

// Writer writes 4 KiB pieces of seeded random data at random offsets of
// one or more disk images, one after another, logging each write in order
// after it returned. Any crash-consistent view of the disks is then the
// initial content plus exactly the first N logged writes, for some N.
type Writer struct {
	Paths []string
	Seed  uint64
	size  int64
	mu    sync.Mutex
	log   []LoggedWrite
	stop  chan struct{}
	done  chan struct{}
	Err   error
}

// StartWriter starts writing to paths (all of size bytes) with a pause
// between writes.
func StartWriter(t testing.TB, paths []string, size int64, seed uint64, pause time.Duration) *Writer {
	t.Helper()
	return startWriter(t, paths, size, seed, pause, "", 0)
}

// StartPausableWriter is StartWriter with a source driver's pause and
// resume: the commands it returns stop the writer between two writes and
// let it go on (a handshake through files in a temporary directory), as
// `virsh suspend` and `virsh resume` would a VM.
func StartPausableWriter(t testing.TB, paths []string, size int64, seed uint64, pause time.Duration) (w *Writer, pauseCmd, resumeCmd string) {
	t.Helper()
	ctl := t.TempDir()
	w = startWriter(t, paths, size, seed, pause, ctl, 0)
	pauseCmd, resumeCmd = pauseCommands(ctl)
	return w, pauseCmd, resumeCmd
}

// pauseCommands are the source driver's pause and resume of a writer
// controlled through directory ctl (waitWhilePaused).
func pauseCommands(ctl string) (pauseCmd, resumeCmd string) {
	req, ack := filepath.Join(ctl, "pause"), filepath.Join(ctl, "paused")
	// A stopped writer never answers: after 10 s the pause goes on (no
	// write can happen then anyway).
	pauseCmd = fmt.Sprintf("touch %s; for i in $(seq 1000); do [ -e %s ] && exit 0; sleep 0.01; done", req, ack)
	resumeCmd = fmt.Sprintf("rm -f %s; for i in $(seq 1000); do [ -e %s ] || exit 0; sleep 0.01; done", req, ack)
	return pauseCmd, resumeCmd
}

// waitWhilePaused holds the writer while ctl/pause exists, saying so with
// ctl/paused.
func waitWhilePaused(ctl string, stop <-chan struct{}) {
	req, ack := filepath.Join(ctl, "pause"), filepath.Join(ctl, "paused")
	if _, err := os.Stat(req); err != nil {
		return
	}
	os.WriteFile(ack, nil, 0o644)
	defer os.Remove(ack)
	for {
		if _, err := os.Stat(req); err != nil {
			return
		}
		select {
		case <-stop:
			return
		case <-time.After(time.Millisecond):
		}
	}
}

// StartPausableDeviceWriter is StartPausableWriter for block devices: each
// write is synced (O_DSYNC) before it is logged, as a VM's writes with
// cache=none reach its disk, so a paused writer has nothing in flight.
func StartPausableDeviceWriter(t testing.TB, paths []string, size int64, seed uint64, pause time.Duration) (w *Writer, pauseCmd, resumeCmd string) {
	t.Helper()
	ctl := t.TempDir()
	w = startWriter(t, paths, size, seed, pause, ctl, os.O_SYNC)
	pauseCmd, resumeCmd = pauseCommands(ctl)
	return w, pauseCmd, resumeCmd
}

// startWriter starts a writer of paths, opened with os.O_WRONLY|flag.
func startWriter(t testing.TB, paths []string, size int64, seed uint64, pause time.Duration, ctl string, flag int) *Writer {
	t.Helper()
	w := &Writer{Paths: paths, Seed: seed, size: size, stop: make(chan struct{}), done: make(chan struct{})}
	files := make([]*os.File, len(paths))
	for i, p := range paths {
		f, err := os.OpenFile(p, os.O_WRONLY|flag, 0)
		require.NoError(t, err)
		files[i] = f
	}
	go func() {
		defer close(w.done)
		defer func() {
			for _, f := range files {
				f.Close()
			}
		}()
		rng := rand.New(rand.NewPCG(seed, 99))
		buf := make([]byte, workload.WriteSize)
		for seq := 0; ; seq++ {
			select {
			case <-w.stop:
				return
			default:
			}
			if ctl != "" {
				waitWhilePaused(ctl, w.stop)
			}
			lw := LoggedWrite{Disk: rng.IntN(len(files)), Offset: rng.Int64N(size/workload.WriteSize) * workload.WriteSize, Seq: seq}
			workload.Content(buf, seed, seq)
			if _, err := files[lw.Disk].WriteAt(buf, lw.Offset); err != nil {
				w.Err = err
				return
			}
			w.mu.Lock()
			w.log = append(w.log, lw)
			w.mu.Unlock()
			if pause > 0 {
				time.Sleep(pause)
			}
		}
	}()
	t.Cleanup(w.Stop)
	return w
}

// Stop stops the writer and waits for it.
func (w *Writer) Stop() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// Log returns the writes so far, in order.
func (w *Writer) Log() []LoggedWrite {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]LoggedWrite(nil), w.log...)
}

// PrefixLength finds N such that the exported disks (files named
// names[i].raw in dir) equal the initial images plus exactly the first N
// logged writes, or fails the test. initial holds each disk's first state.
func PrefixLength(t testing.TB, dir string, names []string, initial [][]byte, log []LoggedWrite, seed uint64) int {
	t.Helper()
	paths := make([]string, len(names))
	for i, n := range names {
		paths[i] = filepath.Join(dir, n+".raw")
	}
	return PrefixLengthOf(t, paths, initial, log, seed)
}

// PrefixLengthOf is PrefixLength for disk files anywhere (a recovered
// machine's disks): paths[i] is disk i of the writer.
func PrefixLengthOf(t testing.TB, paths []string, initial [][]byte, log []LoggedWrite, seed uint64) int {
	t.Helper()
	names := paths
	got := make([][]byte, len(paths))
	for i, p := range paths {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		require.Equal(t, len(initial[i]), len(b), "disk %s size", p)
		got[i] = b
	}
	type slot struct {
		disk int
		off  int64
	}
	// For each slot the writes touch, whether the export agrees with the
	// model at the current N; find the N where no slot disagrees.
	content := func(seq int) []byte {
		b := make([]byte, workload.WriteSize)
		workload.Content(b, seed, seq)
		return b
	}
	model := map[slot][]byte{}
	disagree := map[slot]bool{}
	for _, w := range log {
		s := slot{w.Disk, w.Offset}
		if _, ok := model[s]; !ok {
			model[s] = initial[w.Disk][w.Offset : w.Offset+workload.WriteSize]
			if !bytes.Equal(model[s], got[w.Disk][w.Offset:w.Offset+workload.WriteSize]) {
				disagree[s] = true
			}
		}
	}
	candidate := -1
	if len(disagree) == 0 {
		candidate = 0
	}
	for i, w := range log {
		if candidate >= 0 {
			break
		}
		s := slot{w.Disk, w.Offset}
		c := content(w.Seq)
		if bytes.Equal(c, got[w.Disk][w.Offset:w.Offset+workload.WriteSize]) {
			delete(disagree, s)
		} else {
			disagree[s] = true
		}
		if len(disagree) == 0 {
			candidate = i + 1
		}
	}
	require.GreaterOrEqual(t, candidate, 0, "the disks are not the initial disks plus any prefix of the writes")
	// Confirm byte for byte, everywhere, at that N.
	for d := range names {
		want := append([]byte(nil), initial[d]...)
		for _, w := range log[:candidate] {
			if w.Disk == d {
				copy(want[w.Offset:], content(w.Seq))
			}
		}
		if !bytes.Equal(want, got[d]) {
			require.Fail(t, fmt.Sprintf("disk %s differs from the initial image plus the first %d writes", names[d], candidate))
		}
	}
	return candidate
}
