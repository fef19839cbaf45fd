package disk

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRawSparseFileExtentsAndReads(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.img")
	size := mib(32) + 3*512
	f, err := os.Create(p)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(size))
	a := bytes.Repeat([]byte{0xA5}, 64<<10)
	b := bytes.Repeat([]byte{0x5A}, 8<<10)
	_, err = f.WriteAt(a, mib(1))
	require.NoError(t, err)
	_, err = f.WriteAt(b, mib(20))
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{1, 2, 3}, size-3)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	stats := &ReadStats{}
	src, err := Open(p, OpenOptions{Stats: stats})
	require.NoError(t, err)
	defer src.Close()
	require.Equal(t, FormatRaw, src.Format())
	require.Equal(t, size, src.Size())
	stats.Bytes.Store(0) // format detection read the first and last sector

	ext, err := src.Extents(context.Background())
	require.NoError(t, err)
	checkExtentShape(t, ext, size)
	// The filesystem allocates in blocks of at most 64 KiB here; the extents
	// must cover the writes and leave the big holes out.
	for _, w := range []Extent{{mib(1), 64 << 10}, {mib(20), 8 << 10}, {size - 3, 3}} {
		require.Equal(t, []Extent{w}, intersect(ext, []Extent{w}), "write %+v not covered by %v", w, ext)
	}
	require.Less(t, totalLength(ext), mib(1), "holes reported as data: %v", describe(ext))

	// Reading exactly the extents reads exactly their bytes from the file.
	for _, e := range ext {
		buf := make([]byte, e.Length)
		n, err := src.ReadAt(buf, e.Offset)
		if err != nil {
			require.ErrorIs(t, err, io.EOF)
		}
		require.Equal(t, int(e.Length), n)
	}
	require.Equal(t, totalLength(ext), stats.Bytes.Load(), "%v", ext)
	compareWithFile(t, src, p)
}

func TestRawReadAtEOF(t *testing.T) {
	p := filepath.Join(t.TempDir(), "small.raw")
	require.NoError(t, os.WriteFile(p, []byte("0123456789"), 0o644))
	src, err := Open(p, OpenOptions{})
	require.NoError(t, err)
	defer src.Close()
	buf := make([]byte, 8)
	n, err := src.ReadAt(buf, 6)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, 4, n)
	require.Equal(t, "6789", string(buf[:n]))
	n, err = src.ReadAt(buf, 10)
	require.ErrorIs(t, err, io.EOF)
	require.Zero(t, n)
	_, err = src.ReadAt(buf, -1)
	require.Error(t, err)
}

func TestRawConcurrentReads(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.raw")
	writeImage(t, p, imageSpec{size: mib(8), seed: 7})
	want, err := os.ReadFile(p)
	require.NoError(t, err)
	src, err := Open(p, OpenOptions{})
	require.NoError(t, err)
	defer src.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096+g*512)
			for off := int64(g * 512); off+int64(len(buf)) <= src.Size(); off += 1 << 18 {
				if _, err := src.ReadAt(buf, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf, want[off:off+int64(len(buf))]) {
					errs <- errors.New("concurrent read returned wrong bytes")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := Open(filepath.Join(dir, "missing.img"), OpenOptions{})
	require.ErrorIs(t, err, fs.ErrNotExist)
	_, err = Open(dir, OpenOptions{})
	require.Error(t, err)
	p := filepath.Join(dir, "x.raw")
	require.NoError(t, os.WriteFile(p, []byte("x"), 0o644))
	_, err = Open(p, OpenOptions{Format: "vdi"})
	require.ErrorIs(t, err, ErrUnsupported)
	var fe *FormatError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, p, fe.Path)
}

func TestIsImageFile(t *testing.T) {
	for name, want := range map[string]bool{
		"a.img": true, "b.RAW": true, "c.vhd": true, "d.VHDX": true, "e.vmdk": true,
		"f.qcow2": true, "g.qcow": true, "h.txt": false, "vmdk": false, "i.vmdk.lck": false, "j.iso": false,
	} {
		require.Equal(t, want, IsImageFile(name), name)
	}
}

func TestProbeRaw(t *testing.T) {
	p := filepath.Join(t.TempDir(), "p.img")
	writeImage(t, p, imageSpec{size: mib(2) + 512, seed: 1})
	info, err := Probe(p)
	require.NoError(t, err)
	require.Equal(t, FormatRaw, info.Format)
	require.Equal(t, mib(2)+512, info.VirtualSize)
	require.Equal(t, mib(2)+512, info.FileSize)
	require.False(t, info.BlockDevice)
	require.Empty(t, info.Backing)
}

// TestRawBlockDevice reads a loop device: size from the ioctl, the whole
// device as one extent, the same bytes as its backing file.
func TestRawBlockDevice(t *testing.T) {
	requireCapability(t, os.Geteuid() == 0, "needs root for losetup")
	_, err := exec.LookPath("losetup")
	requireCapability(t, err == nil, "losetup not found (util-linux)")
	p := filepath.Join(t.TempDir(), "backing.img")
	writeImage(t, p, imageSpec{size: mib(4), seed: 3})
	out, err := exec.Command("losetup", "-f", "--show", p).CombinedOutput()
	requireCapability(t, err == nil, "losetup -f failed (no loop devices?): "+string(out))
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })

	src, err := Open(dev, OpenOptions{})
	require.NoError(t, err)
	defer src.Close()
	require.Equal(t, FormatRaw, src.Format())
	require.Equal(t, mib(4), src.Size())
	ext, err := src.Extents(context.Background())
	require.NoError(t, err)
	require.Equal(t, []Extent{{0, mib(4)}}, ext)
	compareWithFile(t, src, p)

	info, err := Probe(dev)
	require.NoError(t, err)
	require.True(t, info.BlockDevice)
	require.Equal(t, mib(4), info.VirtualSize)
}
