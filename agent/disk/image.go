package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// segKind says where the guest bytes of a segment come from.
type segKind uint8

const (
	segZero       segKind = iota // zeros, never the parent's bytes
	segParent                    // the parent's bytes, or zeros without a parent
	segData                      // bytes stored in a container file
	segCompressed                // part of one compressed cluster
)

// segment describes the guest bytes from a queried offset on.
type segment struct {
	kind   segKind
	length int64      // guest bytes covered, > 0
	file   fileReader // segData
	off    int64      // segData: file offset of the queried guest byte
	// refine asks Extents to look for file holes inside a data segment
	// (raw files, fixed VHD/VHDX, flat VMDK extents).
	refine bool
	comp   *compressed // segCompressed
}

// compressed is one compressed cluster or grain.
type compressed struct {
	file       fileReader
	off, n     int64 // where the compressed bytes are
	guestStart int64 // guest offset of the cluster's first byte
	size       int64 // decompressed size
	decode     func(dst, src []byte) error
	// locate, if set, finds off and n when the cluster is read (a VMDK
	// grain marker stores the compressed size in front of the data).
	locate func() (off, n int64, err error)
}

// mapper translates guest offsets for one image format. mapAt describes
// the bytes from off on; it may stop once it has covered want bytes (a
// hint that keeps small reads from scanning whole tables).
type mapper interface {
	mapAt(off, want int64) (segment, error)
}

// image is a Source over a mapper: the same ReadAt and Extents serve
// every format.
type image struct {
	format  Format
	path    string
	size    int64
	m       mapper
	parent  Source
	closers []io.Closer
	ident   string // identity a child checks its parent link against

	mu        sync.Mutex // guards the decompressed-cluster cache
	cacheKey  *compressed
	cacheKeyO int64
	cacheBuf  []byte
}

var _ Source = (*image)(nil)

func (im *image) Size() int64    { return im.size }
func (im *image) Format() Format { return im.format }

func (im *image) Close() error {
	var errs []error
	if im.parent != nil {
		errs = append(errs, im.parent.Close())
	}
	for _, c := range im.closers {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

var errNegativeOffset = errors.New("negative offset")

// ReadAt reads the guest view.
func (im *image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errNegativeOffset
	}
	if off >= im.size {
		return 0, io.EOF
	}
	var eof error
	if rem := im.size - off; int64(len(p)) > rem {
		p, eof = p[:rem], io.EOF
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		seg, err := im.m.mapAt(pos, int64(len(p)-done))
		if err != nil {
			return done, err
		}
		if seg.length <= 0 {
			return done, corruptf(im.format, im.path, "empty mapping at guest offset %d", pos)
		}
		n := len(p) - done
		if seg.length < int64(n) {
			n = int(seg.length)
		}
		buf := p[done : done+n]
		switch seg.kind {
		case segZero:
			clear(buf)
		case segParent:
			if err := im.readParent(buf, pos); err != nil {
				return done, err
			}
		case segData:
			if err := readPadded(seg.file, buf, seg.off); err != nil {
				return done, ioError(im.format, im.path, "read data", err)
			}
		case segCompressed:
			if err := im.readCompressed(buf, seg.comp, pos); err != nil {
				return done, err
			}
		default:
			return done, fmt.Errorf("disk: unknown segment kind %d", seg.kind)
		}
		done += n
	}
	return done, eof
}

// readParent reads from the parent; past the parent's end the guest sees zeros.
func (im *image) readParent(buf []byte, pos int64) error {
	if im.parent == nil || pos >= im.parent.Size() {
		clear(buf)
		return nil
	}
	want := buf
	if rem := im.parent.Size() - pos; int64(len(buf)) > rem {
		want = buf[:rem]
		clear(buf[rem:])
	}
	n, err := im.parent.ReadAt(want, pos)
	if n == len(want) {
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func (im *image) readCompressed(buf []byte, c *compressed, pos int64) error {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.cacheKey == nil || im.cacheKey.file != c.file || im.cacheKeyO != c.off {
		key := c.off
		if c.locate != nil {
			off, n, err := c.locate()
			if err != nil {
				return corruptf(im.format, im.path, "compressed cluster at file offset %d: %v", c.off, err)
			}
			c.off, c.n = off, n
		}
		src := make([]byte, c.n)
		if err := readPadded(c.file, src, c.off); err != nil {
			return ioError(im.format, im.path, "read compressed cluster", err)
		}
		if cap(im.cacheBuf) < int(c.size) {
			im.cacheBuf = make([]byte, c.size)
		}
		dst := im.cacheBuf[:c.size]
		if err := c.decode(dst, src); err != nil {
			im.cacheKey = nil
			return corruptf(im.format, im.path, "compressed cluster at file offset %d: %v", c.off, err)
		}
		im.cacheKey, im.cacheKeyO, im.cacheBuf = c, key, dst
	}
	start := pos - c.guestStart
	if start < 0 || start+int64(len(buf)) > int64(len(im.cacheBuf)) {
		return corruptf(im.format, im.path, "compressed cluster mapping out of range at guest offset %d", pos)
	}
	copy(buf, im.cacheBuf[start:])
	return nil
}

// ctxCheckEvery is how many mappings Extents walks between context checks.
const ctxCheckEvery = 1024

// Extents walks the mapping once; parent extents fill the ranges that fall
// through to the parent.
func (im *image) Extents(ctx context.Context) ([]Extent, error) {
	var own, fall []Extent
	steps := 0
	for off := int64(0); off < im.size; {
		if steps++; steps%ctxCheckEvery == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		seg, err := im.m.mapAt(off, im.size-off)
		if err != nil {
			return nil, err
		}
		if seg.length <= 0 {
			return nil, corruptf(im.format, im.path, "empty mapping at guest offset %d", off)
		}
		n := min(seg.length, im.size-off)
		switch seg.kind {
		case segData:
			if !seg.refine {
				own = appendExtent(own, Extent{off, n})
				break
			}
			rs, err := seg.file.dataRanges(seg.off, n)
			if err != nil {
				return nil, ioError(im.format, im.path, "find data ranges", err)
			}
			for _, r := range rs {
				own = appendExtent(own, Extent{off + r.Offset - seg.off, r.Length})
			}
		case segCompressed:
			own = appendExtent(own, Extent{off, n})
		case segParent:
			if im.parent != nil {
				fall = appendExtent(fall, Extent{off, n})
			}
		}
		off += n
	}
	if len(fall) > 0 {
		pe, err := im.parent.Extents(ctx)
		if err != nil {
			return nil, err
		}
		own = append(own, intersect(fall, clip(pe, im.parent.Size()))...)
	}
	return normalize(own), nil
}
