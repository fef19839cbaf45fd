//go:build linux

package disk

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// loopDevice attaches a loop device to the file at backing, detached at
// cleanup.
func loopDevice(t *testing.T, backing string) string {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "losetup")
	out, err := exec.Command("losetup", "-f", "--show", backing).CombinedOutput()
	testenv.Require(t, err == nil, "losetup -f failed (no loop devices?): "+string(out))
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// mountedExt4 makes an ext4 filesystem on a loop device over a sparse
// file of size bytes and mounts it until cleanup. Its inode tables and
// journal are initialised by mkfs, so that the mounted filesystem writes
// nothing in the background (ext4lazyinit) once synced.
func mountedExt4(t *testing.T, size int64) (dev, backing, mnt string) {
	t.Helper()
	dev, backing = testenv.LoopFile(t, size)
	return dev, backing, testenv.MountExt4(t, dev)
}

// readBuffered reads [off, off+n) of a device through a plain descriptor,
// that is through the device's page cache.
func readBuffered(t *testing.T, dev string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(dev)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, n)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	return b
}

// openDirectSource opens a block device as the agent does and checks that
// it is read with O_DIRECT, not through its page cache.
func openDirectSource(t *testing.T, dev string) Source {
	t.Helper()
	src, err := Open(dev, OpenOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { src.Close() })
	require.Empty(t, PageCacheReads(src), "the loop device must take O_DIRECT")
	c := src.(*image).closers[0].(*container)
	require.True(t, c.block)
	require.NotNil(t, c.direct, "a block device is read through an O_DIRECT descriptor")
	return src
}

// TestBlockDeviceStaleCache: a filesystem writes its files' blocks to the
// device without updating the device's page cache, so a buffered read of
// the device after the cache was filled returns the old blocks. The
// agent's reader returns the new ones.
func TestBlockDeviceStaleCache(t *testing.T) {
	dev, _, mnt := mountedExt4(t, 64<<20)
	// Fill the device's page cache, as a first full read (or blkid, or a
	// backup tool) does.
	before := readBuffered(t, dev, 0, 64<<20)

	var content bytes.Buffer
	for i := 0; content.Len() < 256<<10; i++ {
		fmt.Fprintf(&content, "ferry O_DIRECT test, new bytes, line %08d\n", i)
	}
	newBytes := content.Bytes()[:256<<10]
	f, err := os.Create(filepath.Join(mnt, "new.dat"))
	require.NoError(t, err)
	_, err = f.Write(newBytes)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	ext, err := snapshot.Extents(f.Name())
	require.NoError(t, err)
	require.NotEmpty(t, ext, "the file has blocks on the device after fsync")

	src := openDirectSource(t, dev)
	stale := 0
	for _, e := range ext {
		require.Zero(t, e.Flags&(snapshot.FlagUnknown|snapshot.FlagDelalloc|snapshot.FlagEncoded|snapshot.FlagInline),
			"extent %+v has no plain physical address", e)
		require.LessOrEqual(t, e.Physical+e.Length, int64(len(before)))
		want := newBytes[e.Logical : e.Logical+e.Length]
		old := before[e.Physical : e.Physical+e.Length]
		require.NotEqual(t, old, want, "the file's blocks held these bytes before it was written")

		// (a) The precondition: the buffered read is stale.
		switch buf := readBuffered(t, dev, e.Physical, e.Length); {
		case bytes.Equal(buf, old):
			stale++
		case bytes.Equal(buf, want):
			t.Logf("the buffered read of %s at %d shows the new bytes: this kernel keeps the device's cache coherent here; only the agent's reader is checked", dev, e.Physical)
		default:
			t.Fatalf("the buffered read of %s at %d shows neither the old nor the new bytes", dev, e.Physical)
		}

		// (b) The agent's reader sees what the filesystem wrote.
		got := make([]byte, e.Length)
		n, err := src.ReadAt(got, e.Physical)
		require.NoError(t, err)
		require.Equal(t, int(e.Length), n)
		require.True(t, bytes.Equal(want, got), "the agent's reader returns the new bytes at %d", e.Physical)
	}
	t.Logf("%d of %d extents read stale through the page cache (the precondition %s)", stale, len(ext),
		map[bool]string{true: "held", false: "did not hold"}[stale > 0])
}

// TestBlockDeviceUnalignedTail reads a device whose size is not a multiple
// of 64 KiB (1 MiB + 512 bytes): its last, partial block and reads at odd
// offsets, lengths and buffer addresses return exactly the bytes of the
// backing file.
func TestBlockDeviceUnalignedTail(t *testing.T) {
	testenv.RequireRoot(t)
	const size = 1<<20 + 512
	kept := make([]byte, size)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range kept {
		kept[i] = byte(rng.Uint32())
	}
	backing := filepath.Join(t.TempDir(), "tail.img")
	require.NoError(t, os.WriteFile(backing, kept, 0o600))
	dev := loopDevice(t, backing)
	src := openDirectSource(t, dev)
	require.Equal(t, int64(size), src.Size())

	for _, bs := range []int64{64 << 10, 4 << 10} {
		last := (size - 1) / bs * bs
		buf := make([]byte, bs)
		n, err := src.ReadAt(buf, last)
		require.ErrorIs(t, err, io.EOF, "a read of a whole %d-byte block past the end", bs)
		require.Equal(t, size-last, int64(n))
		require.Equal(t, kept[last:], buf[:n], "the last partial %d-byte block", bs)
		// As the cycle reads it: only what the device holds.
		n, err = src.ReadAt(buf[:size-last], last)
		require.NoError(t, err)
		require.Equal(t, kept[last:], buf[:n])
	}
	for _, r := range []struct{ off, n, shift int }{
		{size - 300, 300, 1}, {size - 1, 1, 0}, {1<<20 - 100, 600, 3}, {511, 2, 0}, {12345, 65536, 7}, {0, size, 1},
	} {
		buf := make([]byte, r.n+r.shift)
		n, err := src.ReadAt(buf[r.shift:], int64(r.off))
		require.NoError(t, err, "read of %d at %d", r.n, r.off)
		require.Equal(t, r.n, n)
		require.Equal(t, kept[r.off:r.off+r.n], buf[r.shift:], "read of %d at %d (buffer shifted %d)", r.n, r.off, r.shift)
	}
}

// TestBlockDeviceWholeEquality writes files through a mounted filesystem
// after the device's page cache was filled, syncs it and compares the
// whole device, read by the agent's reader in 64 KiB blocks and in odd
// pieces, with the backing file, which holds what the loop device wrote
// (the loop driver writes through the backing file's page cache).
func TestBlockDeviceWholeEquality(t *testing.T) {
	const size = 32 << 20
	dev, backing, mnt := mountedExt4(t, size)
	readBuffered(t, dev, 0, size)
	rng := rand.New(rand.NewPCG(3, 9))
	for i := range 12 {
		b := make([]byte, 1+rng.IntN(2<<20))
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		p := filepath.Join(mnt, fmt.Sprintf("f%d", i))
		require.NoError(t, os.WriteFile(p, b, 0o600))
		if i%3 == 0 {
			require.NoError(t, os.Remove(p))
		}
	}
	d, err := os.Open(mnt)
	require.NoError(t, err)
	require.NoError(t, unix.Syncfs(int(d.Fd())))
	require.NoError(t, d.Close())
	kept, err := os.ReadFile(backing)
	require.NoError(t, err)
	require.Len(t, kept, size)
	defer func() {
		// The precondition of the comparison: the filesystem wrote
		// nothing while the device was read.
		again, err := os.ReadFile(backing)
		require.NoError(t, err)
		require.True(t, bytes.Equal(kept, again), "the device changed while the test read it")
	}()
	if buffered := readBuffered(t, dev, 0, size); !bytes.Equal(buffered, kept) {
		t.Logf("a buffered read of %s differs from what was written (its page cache is stale)", dev)
	} else {
		t.Logf("a buffered read of %s matches what was written here: the comparison below cannot tell O_DIRECT from the cache", dev)
	}

	src := openDirectSource(t, dev)
	for _, piece := range []int{64 << 10, 12345} {
		buf := make([]byte, piece+1)[1:] // an unaligned buffer for the odd pieces
		if piece == 64<<10 {
			buf = make([]byte, piece)
		}
		for off := 0; off < size; off += piece {
			n := min(piece, size-off)
			got, err := src.ReadAt(buf[:n], int64(off))
			require.NoError(t, err)
			require.Equal(t, n, got)
			if !bytes.Equal(kept[off:off+n], buf[:n]) {
				t.Fatalf("the agent's reader differs from the written bytes at %d (pieces of %d)", off, piece)
			}
		}
	}
}
