package disk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"syscall"
)

// fileReader is a container file as the format readers see it: positioned
// reads, a size fixed at open, and the ranges of it that may hold data.
type fileReader interface {
	io.ReaderAt
	// Size is the container's size at open. Format readers validate their
	// tables against it; bytes past it read as zeros (as qemu does for the
	// last, partially written cluster of an image).
	Size() int64
	// dataRanges returns the sub-ranges of [off, off+n) that may hold
	// non-zero bytes, ascending. A filesystem without SEEK_DATA says all.
	dataRanges(off, n int64) ([]Extent, error)
	Path() string
}

// container is an open file with read accounting.
type container struct {
	f     *os.File
	path  string
	size  int64
	stats *ReadStats
	block bool // a block device: no holes to look for

	// direct reads a block device around its page cache (direct.go); nil
	// for files, off Linux, and for a device that refused O_DIRECT.
	direct directFile
	// cached, once set, is why a block device is read through its page
	// cache after all; reads then use f.
	cached atomic.Pointer[string]
}

var _ fileReader = (*container)(nil)

func openContainer(path string, stats *ReadStats) (*container, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		f.Close()
		return nil, &os.PathError{Op: "open image", Path: path, Err: errors.New("is a directory")}
	}
	c := &container{f: f, path: path, stats: stats}
	size, block, err := statSize(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("size of %s: %w", path, err)
	}
	c.size, c.block = size, block
	if block {
		d, err := openDirect(path)
		switch {
		case err != nil:
			c.readCached("O_DIRECT refused at open", err)
		case d != nil:
			c.direct = d
		}
	}
	return c, nil
}

func (c *container) Size() int64  { return c.size }
func (c *container) Path() string { return c.path }

func (c *container) Close() error {
	err := c.f.Close()
	if c.direct != nil {
		err = errors.Join(err, c.direct.Close())
	}
	return err
}

// readCached switches a block device to reads through its page cache.
func (c *container) readCached(what string, err error) {
	why := fmt.Sprintf("block device %s is read through its page cache (%s: %v), which the filesystem on it does not keep up to date: its reads may return stale blocks", c.path, what, err)
	c.cached.CompareAndSwap(nil, &why)
}

// ReadAt reads from the file and counts what it read.
func (c *container) ReadAt(p []byte, off int64) (n int, err error) {
	if c.direct != nil && c.cached.Load() == nil {
		n, err = c.direct.ReadAt(p, off)
		if n == 0 && errors.Is(err, syscall.EINVAL) {
			// The device took O_DIRECT at open but refuses the reads.
			c.readCached("O_DIRECT read refused", err)
			n, err = c.f.ReadAt(p, off)
		}
	} else {
		n, err = c.f.ReadAt(p, off)
	}
	if c.stats != nil && n > 0 {
		c.stats.Bytes.Add(int64(n))
	}
	return n, err
}

func (c *container) dataRanges(off, n int64) ([]Extent, error) {
	if end := c.size; off+n > end {
		n = end - off
	}
	if n <= 0 {
		return nil, nil
	}
	if c.block {
		return []Extent{{off, n}}, nil
	}
	return seekDataRanges(c.f, off, n)
}

// errShortRead reports a container that holds fewer bytes than its size
// at open said: the file shrank under us.
var errShortRead = errors.New("container file shrank while open")

// readPadded fills p from r at off. Bytes at or past r.Size() read as
// zeros; a short read before that is an error.
func readPadded(r fileReader, p []byte, off int64) error {
	avail := r.Size() - off
	if avail <= 0 {
		clear(p)
		return nil
	}
	want := p
	if int64(len(p)) > avail {
		want = p[:avail]
		clear(p[avail:])
	}
	n, err := r.ReadAt(want, off)
	if n == len(want) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = errShortRead
	}
	return fmt.Errorf("read %s at %d: %w", r.Path(), off+int64(n), err)
}

// readExact reads len(p) bytes at off that must all lie inside the file:
// used for metadata (headers, tables), where a short file is corruption.
func readExact(r fileReader, p []byte, off int64) (ok bool, err error) {
	if off < 0 || off+int64(len(p)) > r.Size() {
		return false, nil
	}
	if err := readPadded(r, p, off); err != nil {
		return false, err
	}
	return true, nil
}
