package disk

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// qemuName is qemu's driver name for each format we write.
var qemuName = map[Format]string{FormatRaw: "raw", FormatQCOW2: "qcow2", FormatVHDX: "vhdx", FormatVMDK: "vmdk"}

// checkWritten proves a written image right twice: qemu-img compare finds
// it identical to the raw image, and our own reader reads the raw bytes.
func checkWritten(t *testing.T, q qemuTools, raw, img string, f Format) {
	t.Helper()
	out, err := exec.Command(q.img, "compare", "-f", "raw", "-F", qemuName[f], raw, img).CombinedOutput()
	require.NoError(t, err, "qemu-img compare: %s", out)
	require.Contains(t, string(out), "Images are identical")
	if f == FormatQCOW2 || f == FormatVHDX || f == FormatVMDK {
		out, err := exec.Command(q.img, "check", "-f", qemuName[f], img).CombinedOutput()
		require.NoError(t, err, "qemu-img check: %s", out)
	}
	src, err := Open(img, OpenOptions{})
	require.NoError(t, err)
	defer src.Close()
	require.Equal(t, f, src.Format())
	compareWithFile(t, src, raw)
}

func TestWriteFormats(t *testing.T) {
	q := needQemu(t)
	dir := t.TempDir()
	raw := baseImage(t, dir)
	src, err := Open(raw, OpenOptions{})
	require.NoError(t, err)
	defer src.Close()
	ext, err := src.Extents(context.Background())
	require.NoError(t, err)
	for _, f := range []Format{FormatRaw, FormatQCOW2, FormatVHDX, FormatVMDK} {
		t.Run(string(f), func(t *testing.T) {
			dst := filepath.Join(dir, "out."+string(f))
			var last, calls int64
			err := Write(context.Background(), dst, f, src, WriteOptions{Progress: func(done, total int64) {
				require.GreaterOrEqual(t, done, last, "progress went backwards")
				require.Equal(t, totalLength(ext), total)
				last = done
				calls++
			}})
			require.NoError(t, err)
			require.Equal(t, totalLength(ext), last, "progress did not reach the total")
			require.Greater(t, calls, int64(1))
			_, err = os.Stat(dst + ".tmp")
			require.ErrorIs(t, err, os.ErrNotExist, "temporary file left behind")
			checkWritten(t, q, raw, dst, f)

			// Holes stay holes: the output file allocates far less than
			// the disk (its own data ranges, by SEEK_DATA).
			asRaw, err := Open(dst, OpenOptions{Format: FormatRaw})
			require.NoError(t, err)
			alloc, err := asRaw.Extents(context.Background())
			asRaw.Close()
			require.NoError(t, err)
			require.Less(t, totalLength(alloc), src.Size()*3/4, "output allocates %d bytes for a disk of %d bytes with 40%% holes", totalLength(alloc), src.Size())
			out, err := Open(dst, OpenOptions{})
			require.NoError(t, err)
			defer out.Close()
			oext, err := out.Extents(context.Background())
			require.NoError(t, err)
			require.Less(t, totalLength(oext), src.Size()*3/4, "written image reports holes as data")
		})
	}
}

// TestWriteFromChain converts what a guest sees through a qcow2-on-VMDK
// chain into each format: the writers take any Source.
func TestWriteFromChain(t *testing.T) {
	q := needQemu(t)
	dir := t.TempDir()
	base := baseImage(t, dir)
	parent := filepath.Join(dir, "parent.vmdk")
	q.convert(t, base, "raw", parent, "vmdk", "-o", "subformat=streamOptimized")
	child := filepath.Join(dir, "child.qcow2")
	run(t, q.img, "create", "-q", "-f", "qcow2", "-b", "parent.vmdk", "-F", "vmdk", child)
	run(t, q.io, "-f", "qcow2", "-c", "write -P 0x42 5M 1M", "-c", "write -P 0x24 63M 4k", child)
	ref := q.toRaw(t, child, "qcow2")
	src, err := Open(child, OpenOptions{})
	require.NoError(t, err)
	defer src.Close()
	for _, f := range []Format{FormatQCOW2, FormatVHDX, FormatVMDK, FormatRaw} {
		dst := filepath.Join(dir, "from-chain."+string(f))
		require.NoError(t, Write(context.Background(), dst, f, src, WriteOptions{}))
		checkWritten(t, q, ref, dst, f)
	}
}

// TestWriteLarge writes a 4 GiB+ sparse disk with data past 4 GiB, where
// 32-bit offsets would wrap.
func TestWriteLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("large sparse images in -short mode")
	}
	q := needQemu(t)
	dir := t.TempDir()
	size := int64(4<<30 + 3<<20 + 1024)
	raw := filepath.Join(dir, "large.raw")
	writeImage(t, raw, imageSpec{size: size, seed: 9, sparseOnly: true,
		dataAt: []int64{512, 2<<30 + 4096, 4<<30 + 1<<20 + 512, size - 96<<10}})
	src, err := Open(raw, OpenOptions{})
	require.NoError(t, err)
	defer src.Close()
	for _, f := range []Format{FormatQCOW2, FormatVHDX, FormatVMDK, FormatRaw} {
		dst := filepath.Join(dir, "large-out."+string(f))
		require.NoError(t, Write(context.Background(), dst, f, src, WriteOptions{}))
		checkWritten(t, q, raw, dst, f)
	}
}

// TestWriteCancelled leaves neither the destination nor its temporary file.
func TestWriteCancelled(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "in.raw")
	writeImage(t, raw, imageSpec{size: mib(16), seed: 2})
	src, err := Open(raw, OpenOptions{})
	require.NoError(t, err)
	defer src.Close()
	ctx, cancel := context.WithCancel(context.Background())
	dst := filepath.Join(dir, "out.qcow2")
	err = Write(ctx, dst, FormatQCOW2, src, WriteOptions{Progress: func(done, total int64) { cancel() }})
	require.ErrorIs(t, err, context.Canceled)
	for _, p := range []string{dst, dst + ".tmp"} {
		_, err := os.Stat(p)
		require.True(t, errors.Is(err, os.ErrNotExist), "%s exists after a cancelled write", p)
	}
	err = Write(context.Background(), dst, FormatVHD, src, WriteOptions{})
	require.ErrorIs(t, err, ErrUnsupported)
}
