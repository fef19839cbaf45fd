package agent

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/agent/track"
	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/protocol/msg"
)

// pageWriter rewrites random 4 KiB pages of an image file, one after
// another, each page stamped with its write's number; log[i-1] is the
// page write i went to.
type pageWriter struct {
	f     *os.File
	pages int
	stop  chan struct{}
	done  chan struct{}

	mu  sync.Mutex
	log []int
	err error
}

func startPageWriter(t *testing.T, path string, pages int) *pageWriter {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	w := &pageWriter{f: f, pages: pages, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		rng := rand.New(rand.NewPCG(7, 8))
		buf := make([]byte, track.PageSize)
		for i := 1; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			// Half the writes go to a hot eighth of the file: rounds of
			// the pre-copy meet the same pages again.
			p := rng.IntN(w.pages)
			if i%2 == 0 {
				p = rng.IntN(w.pages / 8)
			}
			for o := 0; o < len(buf); o += 8 {
				binary.LittleEndian.PutUint64(buf[o:], uint64(i))
			}
			_, err := w.f.WriteAt(buf, int64(p)*track.PageSize)
			w.mu.Lock()
			w.log = append(w.log, p)
			w.err = err
			w.mu.Unlock()
			if err != nil {
				return
			}
			if i%8 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	t.Cleanup(func() { w.Stop(); f.Close() })
	return w
}

func (w *pageWriter) Stop() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *pageWriter) written() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int(nil), w.log...)
}

// checkOneInstant finds the N for which the capture holds exactly writes
// 1..N (every page written by them captured, with the newest of them),
// or fails. Each captured page says which write it holds (its stamp; 0:
// the initial content).
func checkOneInstant(t *testing.T, c *captured, log []int) int {
	t.Helper()
	byPage := map[int][]int{} // page → the writes to it, ascending
	for i, p := range log {
		byPage[p] = append(byPage[p], i+1)
	}
	lower, upper := 0, len(log)
	seen := map[int]bool{}
	buf := make([]byte, track.PageSize)
	for _, s := range c.segs {
		for off := s.off; off < s.off+int64(len(s.data)); off += track.PageSize {
			_, err := c.ReadAt(buf, off)
			require.NoError(t, err)
			page := int(off / track.PageSize)
			seen[page] = true
			stamp := int(binary.LittleEndian.Uint64(buf))
			writes := byPage[page]
			next := len(log) + 1 // the first write to the page after stamp
			found := stamp == 0
			for _, w := range writes {
				if w == stamp {
					found = true
				}
				if w > stamp {
					next = w
					break
				}
			}
			require.True(t, found, "page %d holds write %d, which never went there", page, stamp)
			lower, upper = max(lower, stamp), min(upper, next-1)
		}
	}
	require.LessOrEqual(t, lower, upper, "the capture mixes instants: it holds write %d and misses write %d", lower, upper+1)
	for i := 0; i < lower; i++ {
		require.True(t, seen[log[i]], "write %d (page %d) is before the capture's instant but not captured", i+1, log[i])
	}
	return lower
}

// trackedImage is a raw image on its own XFS mount, its tracker started
// and committed to point 1, and an agent to freeze it with.
func trackedImage(t *testing.T, size int64, maxFreeze time.Duration) (*Agent, msg.MachineConfig, []*trackedDisk, string, string) {
	testenv.RequireRoot(t)
	_, err := os.Stat("/sys/kernel/tracing/instances")
	testenv.Require(t, err == nil, "tracefs is not mounted at /sys/kernel/tracing")
	mnt := testenv.MountLoop(t, "xfs", 300<<20)
	img := filepath.Join(mnt, "disk.img")
	require.NoError(t, os.WriteFile(img, make([]byte, size), 0o600))
	var st unix.Stat_t
	require.NoError(t, unix.Stat(img, &st))

	cfg := Config{StateDir: t.TempDir(), MaxFreeze: maxFreeze}
	require.NoError(t, cfg.Validate())
	a := &Agent{cfg: cfg, log: slog.New(slog.DiscardHandler)}
	mc := msg.MachineConfig{Name: "m", Disks: []msg.DiskConfig{{Name: "root", Path: img, BlockSize: 65536}}}
	d := trackedFile(img, st.Ino)
	d.t, err = d.start()
	require.NoError(t, err)
	t.Cleanup(func() { d.t.Close() })
	_, err = d.t.Cut()
	require.NoError(t, err)
	d.t.Commit(1)
	return a, mc, []*trackedDisk{d}, mnt, img
}

// A tracked freeze under writes copies most changed blocks before the
// freeze (rounds of a converging pre-copy) and the rest in it; the
// capture, pre-copied and frozen blocks together, is one instant of the
// file: exactly the writes 1..N, N growing from freeze to freeze.
func TestPrecopyCaptureIsOneInstant(t *testing.T) {
	const size = 32 << 20
	a, mc, disks, mnt, img := trackedImage(t, size, 2*time.Second)
	w := startPageWriter(t, img, size/track.PageSize)
	time.Sleep(200 * time.Millisecond)
	last := 0
	for i := range 6 {
		fz := a.freezeAndCapture(mc, disks, []string{mnt}, nil)
		require.NoError(t, fz.err)
		require.NotNil(t, fz.caps, "freeze %d not captured: %s", i, fz.why)
		require.Positive(t, fz.rounds, "freeze %d: no pre-copy round", i)
		require.Less(t, fz.inFreeze, fz.caps[0].bytes(), "freeze %d read everything in the freeze", i)
		n := checkOneInstant(t, fz.caps[0], w.written())
		t.Logf("freeze %d: writes 1..%d; %d bytes captured, %d pre-copied in %d rounds, %d read in %s frozen",
			i, n, fz.caps[0].bytes(), fz.precopied, fz.rounds, fz.inFreeze, fz.frozen)
		require.GreaterOrEqual(t, n, last)
		last = n
		time.Sleep(100 * time.Millisecond)
	}
	w.Stop()
	require.NoError(t, w.err)
	require.Positive(t, last, "the writer made no write before a freeze")
}

// A freeze that cannot read its blocks within --max-freeze is thawed and
// tried again; after maxFreezeTries the cycle goes without, says so, and
// leaves nothing frozen.
func TestFreezeThatRunsOutIsTriedAgainThenGivenUp(t *testing.T) {
	const size = 32 << 20
	a, mc, disks, mnt, img := trackedImage(t, size, time.Nanosecond)
	w := startPageWriter(t, img, size/track.PageSize)
	time.Sleep(200 * time.Millisecond)
	fz := a.freezeAndCapture(mc, disks, []string{mnt}, nil)
	require.NoError(t, fz.err)
	require.Nil(t, fz.caps)
	require.Contains(t, fz.why, fmt.Sprintf("the freeze timed out %d times", maxFreezeTries))
	// Nothing is left frozen: the writer goes on.
	before := len(w.written())
	require.Eventually(t, func() bool { return len(w.written()) > before }, 5*time.Second, 10*time.Millisecond)
	_, err := os.Stat(a.freezingNote(mc.Name))
	require.ErrorIs(t, err, os.ErrNotExist, "the freezing note outlived a thawed freeze")
}
