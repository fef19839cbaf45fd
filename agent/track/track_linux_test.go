package track

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/internal/testenv"
)

// filesystems are the filesystems the tracker knows; every test runs on
// each.
var filesystems = []string{"xfs", "ext4"}

// trackedFile makes a 16 MiB file on a fresh loop mount of fstype and
// starts tracking it.
func trackedFile(t *testing.T, fstype string) (*File, *os.File, string) {
	testenv.RequireRoot(t)
	err := mountTracefs()
	testenv.Require(t, err == nil, fmt.Sprint("no tracefs: ", err))
	mnt := testenv.MountLoop(t, fstype, 512<<20)
	path := filepath.Join(mnt, "disk.img")
	w, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	require.NoError(t, err)
	t.Cleanup(func() { w.Close() })
	require.NoError(t, w.Truncate(16<<20))
	f, err := Start(path)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f, w, mnt
}

func TestCutHoldsEveryWriteBeforeIt(t *testing.T) {
	for _, fs := range filesystems {
		t.Run(fs, func(t *testing.T) {
			f, w, _ := trackedFile(t, fs)
			buf := make([]byte, 3*PageSize)
			_, err := w.WriteAt(buf[:100], 5*PageSize+10) // inside one page
			require.NoError(t, err)
			_, err = w.WriteAt(buf, 100*PageSize-1) // straddles four pages
			require.NoError(t, err)
			c, err := f.Cut(time.Second)
			require.NoError(t, err)
			require.Empty(t, c.Lost)
			require.Equal(t, []Range{{5 * PageSize, PageSize}, {99 * PageSize, 4 * PageSize}}, c.Ranges)
			require.False(t, c.Usable(1), "no point holds the file's state before tracking began")

			// Until a point is committed, later cuts still hand out the earlier
			// pages; after it, only what came since.
			_, err = w.WriteAt(buf[:1], 1000*PageSize)
			require.NoError(t, err)
			c, err = f.Cut(time.Second)
			require.NoError(t, err)
			require.Len(t, c.Ranges, 3)
			f.Commit(7)
			_, err = w.WriteAt(buf[:1], 2000*PageSize)
			require.NoError(t, err)
			c, err = f.Cut(time.Second)
			require.NoError(t, err)
			require.Equal(t, []Range{{2000 * PageSize, PageSize}}, c.Ranges)
			require.True(t, c.Usable(7))
			require.False(t, c.Usable(6))
		})
	}
}

func TestDirectWritesAreTrackedAndReadsAreNot(t *testing.T) {
	for _, fs := range filesystems {
		t.Run(fs, func(t *testing.T) {
			f, _, mnt := trackedFile(t, fs)
			d, err := os.OpenFile(filepath.Join(mnt, "disk.img"), os.O_WRONLY|unix.O_DIRECT, 0)
			require.NoError(t, err)
			defer d.Close()
			buf, err := unix.Mmap(-1, 0, 64<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
			require.NoError(t, err)
			defer unix.Munmap(buf)
			_, err = d.WriteAt(buf, 1<<20)
			require.NoError(t, err)
			c, err := f.Cut(time.Second)
			require.NoError(t, err)
			require.Equal(t, []Range{{1 << 20, 64 << 10}}, c.Ranges)

			// Direct reads change nothing.
			f.Commit(1)
			r, err := os.OpenFile(filepath.Join(mnt, "disk.img"), os.O_RDONLY|unix.O_DIRECT, 0)
			require.NoError(t, err)
			defer r.Close()
			_, err = r.ReadAt(buf, 4<<20)
			require.NoError(t, err)
			c, err = f.Cut(time.Second)
			require.NoError(t, err)
			require.Empty(t, c.Ranges)
		})
	}
}

// Changes that pages cannot describe make the window lost, until a point
// made another way is committed.
func TestTruncateAndPunchMakeTheWindowLost(t *testing.T) {
	for name, change := range map[string]func(w *os.File) error{
		"truncate": func(w *os.File) error { return w.Truncate(8 << 20) },
		"punch": func(w *os.File) error {
			return unix.Fallocate(int(w.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 1<<20)
		},
	} {
		for _, fs := range filesystems {
			t.Run(name+"/"+fs, func(t *testing.T) {
				f, w, _ := trackedFile(t, fs)
				f.Commit(3)
				require.NoError(t, change(w))
				c, err := f.Cut(time.Second)
				require.NoError(t, err)
				require.NotEmpty(t, c.Lost)
				require.False(t, c.Usable(3))
				f.Commit(4)
				c, err = f.Cut(time.Second)
				require.NoError(t, err)
				require.True(t, c.Usable(4), c.Lost)
			})
		}
	}
}

// Writes to another file of the same filesystem are not this file's.
func TestOtherFilesAreNotTracked(t *testing.T) {
	for _, fs := range filesystems {
		t.Run(fs, func(t *testing.T) {
			f, _, mnt := trackedFile(t, fs)
			require.NoError(t, os.WriteFile(filepath.Join(mnt, "other"), make([]byte, 1<<20), 0o600))
			c, err := f.Cut(time.Second)
			require.NoError(t, err)
			require.Empty(t, c.Ranges)
			require.Empty(t, c.Lost)
		})
	}
}

func TestCloseRemovesTheInstance(t *testing.T) {
	for _, fs := range filesystems {
		t.Run(fs, func(t *testing.T) {
			f, _, _ := trackedFile(t, fs)
			require.NoError(t, f.Close())
			_, err := os.Stat(f.inst)
			require.ErrorIs(t, err, os.ErrNotExist)
		})
	}
}
