package e2e

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/internal/testenv"
)

// physicalOffset is where byte off of the file lies on its device
// (FS_IOC_FIEMAP, after a sync of the file).
func physicalOffset(t *testing.T, path string, off int64) int64 {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	const fiemapHeader, extentSize = 32, 56
	buf := make([]byte, fiemapHeader+extentSize)
	binary.NativeEndian.PutUint64(buf[0:], uint64(off)) // fm_start
	binary.NativeEndian.PutUint64(buf[8:], 4096)        // fm_length
	binary.NativeEndian.PutUint32(buf[16:], 1)          // fm_flags: FIEMAP_FLAG_SYNC
	binary.NativeEndian.PutUint32(buf[24:], 1)          // fm_extent_count
	const fsIocFiemap = 0xC020660B
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0])))
	require.Zero(t, errno, "FIEMAP")
	require.EqualValues(t, 1, binary.NativeEndian.Uint32(buf[20:]), "one extent mapped")
	ext := buf[fiemapHeader:]
	logical, physical := binary.NativeEndian.Uint64(ext[0:]), binary.NativeEndian.Uint64(ext[8:])
	return int64(physical + uint64(off) - logical)
}

// writeBehindTheFilesystem writes data at the file's offset off straight
// to the block device under its filesystem (O_DIRECT), where no write
// tracepoint of the filesystem sees it, then drops the page cache so the
// file reads it back: a write the agent's tracker misses.
func writeBehindTheFilesystem(t *testing.T, mnt, path string, off int64, data []byte) {
	t.Helper()
	dev := strings.TrimSpace(testenv.Run(t, "findmnt", "-n", "-o", "SOURCE", "--target", mnt))
	phys := physicalOffset(t, path, off)
	fd, err := unix.Open(dev, unix.O_WRONLY|unix.O_DIRECT, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	// O_DIRECT needs an aligned buffer: an anonymous mapping is one.
	buf, err := unix.Mmap(-1, 0, len(data), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	require.NoError(t, err)
	defer unix.Munmap(buf)
	copy(buf, data)
	n, err := unix.Pwrite(fd, buf, phys)
	require.NoError(t, err)
	require.Equal(t, len(data), n)
	require.NoError(t, unix.Fsync(fd))
	require.NoError(t, os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0))
	got := make([]byte, len(data))
	f, err := os.Open(path)
	require.NoError(t, err)
	_, err = f.ReadAt(got, off)
	f.Close()
	require.NoError(t, err)
	require.Equal(t, data, got, "the file reads the write made behind its filesystem")
}

// TestPatchOfAMissedWriteIsCaught: a write the tracker cannot see (made on
// the block device under the image's XFS), then a tracked write into the
// same 64 KiB block. The agent sends the block as a patch of the tracked
// page with the hash of the whole block as it reads it, missed write
// included, so the patch over the stored block does not give its hash.
// The controller stores the patch, checks it before making the point,
// drops the pending point and refuses the cycle; the agent resyncs and
// sends the block whole. No point holds the bad patch, and the next point
// equals the image.
func TestPatchOfAMissedWriteIsCaught(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "findmnt")
	_, err := os.Stat("/sys/kernel/tracing/instances")
	testenv.Require(t, err == nil, "tracefs is not mounted at /sys/kernel/tracing")
	mnt := testenv.MountLoop(t, "xfs", 1<<30)
	const size = 16 << 20
	img := filepath.Join(mnt, "d.img")
	makeImage(t, img, 41, size)

	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src", "--track-writes")
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "vm5", "--agent", "src", "--disk", "d="+img, "--policy", "fast")
	first := c.WaitPoint("vm5", 0, 120*time.Second)
	// A tracked-freeze point first, so that the next change is a patch.
	require.Eventually(t, func() bool {
		return len(pointsMadeBy(src.Proc.Output(), "tracked-freeze")) > 0
	}, 60*time.Second, 200*time.Millisecond, "no tracked-freeze point")

	const block = 1 << 20 // a 64 KiB block of the image
	writeBehindTheFilesystem(t, mnt, img, block, bytes.Repeat([]byte("missed! "), 512))
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(bytes.Repeat([]byte("tracked "), 512), block+8192)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	want, err := os.ReadFile(img)
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		return strings.Contains(c.Proc.Output(), "do not give their hash")
	}, 60*time.Second, 200*time.Millisecond, "the controller never caught the patch:\n%s", src.Proc.Output())
	var p Point
	require.Eventually(t, func() bool {
		for _, x := range c.Points("vm5") {
			if x.ID > first.ID {
				got, err := os.ReadFile(filepath.Join(c.Export("vm5", x.ID), "d.raw"))
				require.NoError(t, err, "every point exports: none holds an unchecked patch")
				if bytes.Equal(want, got) {
					p = x
					return true
				}
			}
		}
		return false
	}, 90*time.Second, time.Second, "no point equals the image after the resync")
	require.Contains(t, src.Proc.Output(), "resync", "the agent resynced its map")
	t.Logf("point %d equals the image, missed write included", p.ID)
}
