package disk

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"unsafe"
)

// A block device that holds a mounted filesystem is read around its page
// cache. The filesystem writes its files' blocks to the device without
// going through the device's own page cache, so pages that cache kept
// from an earlier read (ours, or a backup tool's, or blkid's) are never
// updated: a buffered read of the device can hand back blocks as they
// were before the filesystem rewrote them. On Linux the device is opened
// a second time with O_DIRECT (directio_linux.go) and read through an
// alignedReader; where the device refuses O_DIRECT it is read through
// the cache, and the container says so (PageCacheReads).

const (
	// memAlign is the alignment of the buffers handed to a direct read.
	// It is the largest logical block size in common use; a device whose
	// logical block size is larger gets buffers aligned to that.
	memAlign = 4096
	// alignedChunk is the size of a bounce buffer: an unaligned read is
	// done in pieces of at most this many bytes.
	alignedChunk = 1 << 20
)

// directFile is a descriptor whose reads bypass the page cache: offsets,
// lengths and buffer addresses must be multiples of the device's
// logical block size.
type directFile interface {
	io.ReaderAt
	io.Closer
}

// alignedReader reads any range of a directFile: a read whose offset,
// length or buffer is not aligned is rounded out to aligned boundaries,
// read into an aligned bounce buffer and copied out. Aligned reads go
// straight into the caller's buffer. It is safe for concurrent use.
type alignedReader struct {
	f     directFile
	align int64 // offsets and lengths: the logical block size
	mem   int   // buffer addresses
	bufs  sync.Pool
}

func newAlignedReader(f directFile, logicalBlock int64) (*alignedReader, error) {
	if logicalBlock <= 0 || logicalBlock&(logicalBlock-1) != 0 {
		return nil, fmt.Errorf("logical block size %d is not a power of two", logicalBlock)
	}
	r := &alignedReader{f: f, align: logicalBlock, mem: max(memAlign, int(logicalBlock))}
	r.bufs.New = func() any {
		b := alignedBuffer(max(alignedChunk, int(logicalBlock)), r.mem)
		return &b
	}
	return r, nil
}

// alignedBuffer returns n bytes whose address is a multiple of align.
func alignedBuffer(n, align int) []byte {
	b := make([]byte, n+align)
	skip := 0
	if rem := int(uintptr(unsafe.Pointer(&b[0])) % uintptr(align)); rem != 0 {
		skip = align - rem
	}
	return b[skip : skip+n : skip+n]
}

func isAligned(p []byte, align int) bool {
	return len(p) > 0 && uintptr(unsafe.Pointer(&p[0]))%uintptr(align) == 0
}

func (r *alignedReader) Close() error { return r.f.Close() }

// ReadAt reads len(p) bytes at off. As os.File.ReadAt, it returns fewer
// only with an error, io.EOF at the end of the device.
func (r *alignedReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	done := 0
	for done < len(p) {
		pos, rest := off+int64(done), p[done:]
		if k := int64(len(rest)) / r.align * r.align; k > 0 && pos%r.align == 0 && isAligned(rest, r.mem) {
			n, err := r.f.ReadAt(rest[:k], pos)
			done += n
			if err != nil {
				return done, err
			}
			continue
		}
		n, err := r.bounce(rest, pos)
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// bounce reads the start of p at off through an aligned buffer: one
// aligned piece of at most alignedChunk bytes that covers [off, off+len(p))
// or as much of it as fits.
func (r *alignedReader) bounce(p []byte, off int64) (int, error) {
	bp := r.bufs.Get().(*[]byte)
	defer r.bufs.Put(bp)
	buf := *bp
	lo := off / r.align * r.align
	skip := int(off - lo)
	want := min(int64(skip+len(p)+int(r.align)-1)/r.align*r.align, int64(len(buf)))
	n, err := r.f.ReadAt(buf[:want], lo)
	c := 0
	if n > skip {
		c = copy(p, buf[skip:n])
	}
	if c == len(p) {
		return c, nil // the rounding reached past the end; p itself did not
	}
	if err == nil && c < int(want)-skip {
		err = io.EOF // a short read without an error: the end of the device
	}
	return c, err
}

// PageCacheReads says, for each block device under src that is read
// through its page cache although it should not be (the device refused
// O_DIRECT), that its reads may be stale. It is empty for image files,
// for block devices read with O_DIRECT, and off Linux.
func PageCacheReads(src Source) []string {
	im, ok := src.(*image)
	if !ok {
		return nil
	}
	var out []string
	for _, cl := range im.closers {
		if ct, ok := cl.(*container); ok {
			if why := ct.cached.Load(); why != nil {
				out = append(out, *why)
			}
		}
	}
	if im.parent != nil {
		out = append(out, PageCacheReads(im.parent)...)
	}
	return out
}
