package disk

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// strictDevice is a device read with O_DIRECT: it refuses (EINVAL) any
// read whose offset, length or buffer address is not aligned, and reads
// short at its end, as the kernel does.
type strictDevice struct {
	data  []byte
	align int64
	mem   uintptr
	reads int
}

func (d *strictDevice) ReadAt(p []byte, off int64) (int, error) {
	d.reads++
	if off%d.align != 0 || int64(len(p))%d.align != 0 || uintptr(unsafe.Pointer(&p[0]))%d.mem != 0 {
		return 0, syscall.EINVAL
	}
	if off >= int64(len(d.data)) {
		return 0, io.EOF
	}
	n := copy(p, d.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (d *strictDevice) Close() error { return nil }

// TestAlignedReader reads ranges of every kind (aligned or not, in the
// middle, across the end, at odd buffer addresses) from a device that
// refuses unaligned reads, and compares them with the bytes it holds.
func TestAlignedReader(t *testing.T) {
	for _, align := range []int64{512, 4096} {
		size := int64(alignedChunk) + 3*align // not a multiple of the chunk, nor of 64 KiB
		data := make([]byte, size)
		rng := rand.New(rand.NewPCG(uint64(align), 1))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		dev := &strictDevice{data: data, align: align, mem: memAlign}
		r, err := newAlignedReader(dev, align)
		require.NoError(t, err)

		check := func(off int64, n, shift int) {
			t.Helper()
			buf := make([]byte, n+shift+memAlign)
			p := buf[shift : shift+n]
			got, err := r.ReadAt(p, off)
			want := max(0, min(int64(n), size-off))
			require.Equal(t, int(want), got, "read of %d at %d (buffer shifted %d)", n, off, shift)
			if want < int64(n) {
				require.ErrorIs(t, err, io.EOF, "read of %d at %d past the end", n, off)
			} else {
				require.NoError(t, err, "read of %d at %d", n, off)
			}
			require.Equal(t, data[off:off+want], p[:got], "read of %d at %d", n, off)
		}
		check(0, 64<<10, 0)
		check(0, 64<<10, 1)                    // unaligned buffer
		check(align, int(align), memAlign-1)   // one block, unaligned buffer
		check(7, 100, 0)                       // inside one block
		check(align-1, 2, 0)                   // across a block boundary
		check(size-align, 64<<10, 0)           // the partial last 64 KiB block
		check(size-100, 64<<10, 3)             // past the end, unaligned
		check(size-1, 1, 0)                    // the last byte
		check(size, 10, 0)                     // at the end
		check(1, int(size)-1, 0)               // more than a bounce buffer, unaligned
		check(0, int(size)+int(align), 0)      // the whole device and more
		check(alignedChunk-5, alignedChunk, 5) // two bounce buffers
		for range 300 {
			off := rng.Int64N(size + 10)
			n := 1 + rng.IntN(3*int(align)+64<<10)
			check(off, n, rng.IntN(memAlign))
		}
	}
}

// TestAlignedReaderDirect: an aligned read goes straight into the caller's
// buffer, in one read of the device.
func TestAlignedReaderDirect(t *testing.T) {
	dev := &strictDevice{data: make([]byte, 1<<20), align: 512, mem: memAlign}
	r, err := newAlignedReader(dev, 512)
	require.NoError(t, err)
	p := alignedBuffer(64<<10, memAlign)
	n, err := r.ReadAt(p, 128<<10)
	require.NoError(t, err)
	require.Equal(t, len(p), n)
	require.Equal(t, 1, dev.reads)
}

// TestAlignedReaderErrors: a device error is passed on, and a logical
// block size that is not a power of two is refused.
func TestAlignedReaderErrors(t *testing.T) {
	_, err := newAlignedReader(&strictDevice{}, 1000)
	require.Error(t, err)
	r, err := newAlignedReader(failingDevice{}, 512)
	require.NoError(t, err)
	_, err = r.ReadAt(make([]byte, 10), 3)
	require.ErrorIs(t, err, syscall.EIO)
}

type failingDevice struct{}

func (failingDevice) ReadAt([]byte, int64) (int, error) { return 0, syscall.EIO }
func (failingDevice) Close() error                      { return nil }

type refusingDevice struct{}

func (refusingDevice) ReadAt([]byte, int64) (int, error) { return 0, syscall.EINVAL }
func (refusingDevice) Close() error                      { return nil }

// TestDirectRefusedFallsBack: a device that took O_DIRECT at open but
// refuses the reads is read through its page cache from then on, and
// PageCacheReads says so, naming it.
func TestDirectRefusedFallsBack(t *testing.T) {
	p := filepath.Join(t.TempDir(), "dev")
	want := bytes.Repeat([]byte("ferry"), 1000)
	require.NoError(t, os.WriteFile(p, want, 0o600))
	src, err := Open(p, OpenOptions{Format: FormatRaw})
	require.NoError(t, err)
	defer src.Close()
	require.Empty(t, PageCacheReads(src), "an image file is read as it always was")
	c := src.(*image).closers[0].(*container)
	c.block, c.direct = true, refusingDevice{}

	got := make([]byte, len(want))
	n, err := src.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, len(want), n)
	require.Equal(t, want, got)
	notes := PageCacheReads(src)
	require.Len(t, notes, 1)
	require.Contains(t, notes[0], p)
	require.Contains(t, notes[0], "stale")
}
