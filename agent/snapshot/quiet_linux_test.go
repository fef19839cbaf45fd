package snapshot

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/internal/testenv"
)

// coarseNow is the kernel's coarse clock, the one a filesystem without
// fine-grained timestamps stamps writes with: two readings that are equal
// bracket less than one tick.
func coarseNow(t *testing.T) unix.Timespec {
	t.Helper()
	var ts unix.Timespec
	require.NoError(t, unix.ClockGettime(unix.CLOCK_REALTIME_COARSE, &ts))
	return ts
}

func randomImage(t *testing.T, path string, size int, seed uint64) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	require.NoError(t, os.WriteFile(path, b, 0o644))
	return b
}

func openForWrites(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// runningDriver is a source driver whose machine is running, so that no
// view of it is a powered-off one.
func runningDriver() Driver {
	return &driver.Exec{Commands: driver.Commands{Status: "echo running"}}
}

// TestTimestampGranularity runs the experiment on every filesystem this
// machine can mount: the multigrain ones tell two writes in one tick
// apart, ramfs does not.
func TestTimestampGranularity(t *testing.T) {
	for _, c := range []struct {
		fs   string
		fine bool
	}{{"ext4", true}, {"xfs", true}, {"btrfs", true}, {"tmpfs", true}, {"ramfs", false}} {
		t.Run(c.fs, func(t *testing.T) {
			var dir string
			if c.fs == "tmpfs" || c.fs == "ramfs" {
				dir = testenv.MountMemory(t, c.fs)
			} else {
				dir = testenv.MountLoop(t, c.fs, 256<<20)
			}
			img := filepath.Join(dir, "d.img")
			require.NoError(t, os.WriteFile(img, []byte("x"), 0o644))
			_, key, err := stampFile(img)
			require.NoError(t, err)
			fine, detail, err := probeTimestamps(dir, key)
			require.NoError(t, err)
			t.Logf("%s: fine-grained %t %s", c.fs, fine, detail)
			require.Equal(t, c.fine, fine, "%s: %s", c.fs, detail)
			if !fine {
				require.Contains(t, detail, "two writes to a test file, one right after the other")
			}
			ents, err := os.ReadDir(dir)
			require.NoError(t, err)
			for _, e := range ents {
				require.Contains(t, []string{"d.img", "lost+found"}, e.Name(), "the experiment leaves its test file behind")
			}
		})
	}
}

// TestQuietFileView: a running machine's image on ext4 that nobody writes
// while it is read is a crash-consistent quiet-file view, and what is read
// through it is the file.
func TestQuietFileView(t *testing.T) {
	ctx := context.Background()
	mnt := testenv.MountLoop(t, "ext4", 64<<20)
	img := filepath.Join(mnt, "d.img")
	want := randomImage(t, img, 4<<20, 1)
	tk := &Taker{}
	r := Request{Machine: "m", Disks: []Disk{{Name: "d", Path: img}}, Driver: runningDriver()}
	v, err := tk.Take(ctx, r)
	require.NoError(t, err)
	require.Equal(t, MethodQuietFile, v.Method)
	require.Equal(t, CrashConsistent, v.Consistency)
	require.Equal(t, img, v.Disks[0].Path, "a quiet-file view reads the live file")
	require.False(t, v.Disks[0].Cloned)
	got, err := os.ReadFile(v.Disks[0].Path)
	require.NoError(t, err)
	v.ReadDone()
	require.Equal(t, MethodQuietFile, v.Method)
	require.Equal(t, CrashConsistent, v.Consistency)
	require.Empty(t, v.Why)
	require.Equal(t, want, got)
	require.NoError(t, v.Keep(1))

	// After ReadDone the level is final: a later write does not change it.
	v, err = tk.Take(ctx, r)
	require.NoError(t, err)
	v.ReadDone()
	require.NoError(t, os.WriteFile(img, []byte("later"), 0o644))
	v.ReadDone()
	require.Equal(t, CrashConsistent, v.Consistency)
}

// TestQuietFileWrittenDuringRead: a write between the first and the last
// read makes the view a direct read, inconsistent, and says so.
func TestQuietFileWrittenDuringRead(t *testing.T) {
	ctx := context.Background()
	mnt := testenv.MountLoop(t, "ext4", 64<<20)
	img := filepath.Join(mnt, "d.img")
	randomImage(t, img, 4<<20, 2)
	f := openForWrites(t, img)
	tk := &Taker{}
	r := Request{Machine: "m", Disks: []Disk{{Name: "d", Path: img}}, Driver: runningDriver()}
	v, err := tk.Take(ctx, r)
	require.NoError(t, err)
	require.Equal(t, MethodQuietFile, v.Method, "precondition: the view starts out quiet")
	src, err := os.Open(v.Disks[0].Path)
	require.NoError(t, err)
	defer src.Close()
	buf := make([]byte, 2<<20)
	_, err = src.ReadAt(buf, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("the guest wrote this"), 3<<20) // in the half not read yet
	require.NoError(t, err)
	_, err = src.ReadAt(buf, 2<<20)
	require.NoError(t, err)
	v.ReadDone()
	require.Equal(t, MethodDirect, v.Method)
	require.Equal(t, Inconsistent, v.Consistency)
	require.Contains(t, v.Reason(), "the image was written while it was read (disk d: its modification time moved by")
	require.Contains(t, v.Reason(), "no reflink or snapshot view on this filesystem (ext4), and the machine is running")
	require.Equal(t, MethodDirect+": "+v.Reason(), v.Note())
}

// TestQuietFileTwoWritesInOneTick is the acceptance line: the image is
// written right before the view, once right after its first stamp and once
// more, putting back the bytes of the view, right before its last — all
// within one tick of the coarse clock, so that a filesystem with coarse
// timestamps would give every write and both stamps the same times. The
// view must not be claimed quiet.
func TestQuietFileTwoWritesInOneTick(t *testing.T) {
	ctx := context.Background()
	mnt := testenv.MountLoop(t, "ext4", 64<<20)
	img := filepath.Join(mnt, "d.img")
	randomImage(t, img, 64<<10, 3)
	f := openForWrites(t, img)
	tk := &Taker{}
	r := Request{Machine: "m", Disks: []Disk{{Name: "d", Path: img}}, Driver: runningDriver()}
	// The filesystem's experiment runs on first use, outside the tick.
	v, err := tk.Take(ctx, r)
	require.NoError(t, err)
	v.ReadDone()
	require.Equal(t, MethodQuietFile, v.Method, "precondition: ext4 here has fine-grained timestamps")

	for attempt := 0; ; attempt++ {
		require.Less(t, attempt, 500, "never fitted the view and three writes into one tick of the coarse clock")
		t0 := coarseNow(t)
		_, err := f.WriteAt([]byte{0xAA}, 100)
		require.NoError(t, err)
		v, err := tk.Take(ctx, r)
		require.NoError(t, err)
		_, err = f.WriteAt([]byte{0xBB}, 100)
		require.NoError(t, err)
		_, err = os.ReadFile(v.Disks[0].Path)
		require.NoError(t, err)
		_, err = f.WriteAt([]byte{0xAA}, 100) // the byte as it was when the view was taken
		require.NoError(t, err)
		v.ReadDone()
		if coarseNow(t) != t0 {
			continue // not one tick: try again
		}
		t.Logf("one tick after %d attempts", attempt+1)
		require.Equal(t, MethodDirect, v.Method)
		require.Equal(t, Inconsistent, v.Consistency)
		require.Contains(t, v.Reason(), "the image was written while it was read")
		return
	}
}

// TestCoarseTimestampsHideWrites shows what the experiment guards
// against: on ramfs a write in the tick of a stamp leaves the stamp as it
// was; so a view of an image there is never quiet-file, and says why.
func TestCoarseTimestampsHideWrites(t *testing.T) {
	ctx := context.Background()
	dir := testenv.MountMemory(t, "ramfs")
	img := filepath.Join(dir, "d.img")
	randomImage(t, img, 64<<10, 4)
	f := openForWrites(t, img)
	for attempt := 0; ; attempt++ {
		require.Less(t, attempt, 500, "never fitted two stamps and a write into one tick of the coarse clock")
		t0 := coarseNow(t)
		_, err := f.WriteAt([]byte{0xAA}, 100)
		require.NoError(t, err)
		a, _, err := stampFile(img)
		require.NoError(t, err)
		_, err = f.WriteAt([]byte{0xBB}, 100)
		require.NoError(t, err)
		b, _, err := stampFile(img)
		require.NoError(t, err)
		if coarseNow(t) != t0 {
			continue
		}
		require.Empty(t, a.changes(b), "ramfs stamped a write in the same tick apart")
		break
	}

	tk := &Taker{}
	r := Request{Machine: "m", Disks: []Disk{{Name: "d", Path: img}}, Driver: runningDriver()}
	v, err := tk.Take(ctx, r)
	require.NoError(t, err)
	require.Equal(t, MethodDirect, v.Method)
	require.Equal(t, Inconsistent, v.Consistency)
	require.Contains(t, v.Reason(), "no quiet-file view: timestamps on this filesystem are coarser than the writes (two writes to a test file")
	require.Contains(t, v.Reason(), "so a quiet file cannot be told from a written one")
	v.ReadDone()
	require.Equal(t, Inconsistent, v.Consistency, "nothing makes a direct read consistent after the fact")
}

// TestQuietFileSeveralDisks: a machine's point is quiet only when every
// disk was; a write to one names that disk.
func TestQuietFileSeveralDisks(t *testing.T) {
	ctx := context.Background()
	mnt := testenv.MountLoop(t, "ext4", 64<<20)
	a, b := filepath.Join(mnt, "a.img"), filepath.Join(mnt, "b.img")
	randomImage(t, a, 1<<20, 5)
	randomImage(t, b, 1<<20, 6)
	tk := &Taker{}
	r := Request{Machine: "m", Disks: []Disk{{Name: "a", Path: a}, {Name: "b", Path: b}}, Driver: runningDriver()}
	v, err := tk.Take(ctx, r)
	require.NoError(t, err)
	v.ReadDone()
	require.Equal(t, MethodQuietFile, v.Method)
	require.Equal(t, CrashConsistent, v.Consistency)

	v, err = tk.Take(ctx, r)
	require.NoError(t, err)
	require.Equal(t, MethodQuietFile, v.Method)
	f := openForWrites(t, b)
	_, err = f.WriteAt([]byte("b changed"), 0)
	require.NoError(t, err)
	v.ReadDone()
	require.Equal(t, Inconsistent, v.Consistency)
	require.Contains(t, v.Reason(), "(disk b: its modification time moved by")
	require.NotContains(t, v.Reason(), "disk a:")
}

// TestQuietFileReplaced: an image replaced by another file under its
// name while it is read is not quiet, whatever its times.
func TestQuietFileReplaced(t *testing.T) {
	ctx := context.Background()
	mnt := testenv.MountLoop(t, "ext4", 64<<20)
	img := filepath.Join(mnt, "d.img")
	randomImage(t, img, 1<<20, 7)
	tk := &Taker{}
	r := Request{Machine: "m", Disks: []Disk{{Name: "d", Path: img}}, Driver: runningDriver()}
	v, err := tk.Take(ctx, r)
	require.NoError(t, err)
	require.Equal(t, MethodQuietFile, v.Method)
	other := filepath.Join(mnt, "other.img")
	randomImage(t, other, 1<<20, 7)
	require.NoError(t, os.Rename(other, img))
	v.ReadDone()
	require.Equal(t, Inconsistent, v.Consistency)
	require.Contains(t, v.Reason(), "it was replaced by another file")
}
