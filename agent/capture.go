package agent

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/agent/track"
)

// captured is a raw disk's changed blocks, read while its filesystem was
// frozen: the cycle's view of a disk under write tracking. Only these
// blocks can be read; everything else is what the head point holds.
type captured struct {
	size    int64
	changed []snapshot.Range // the pages written, clipped to size
	segs    []capturedSeg    // ascending, whole blocks
}

// capturedSeg is a run of blocks and its bytes, which may be part of a
// larger read's buffer (a pre-copy's blocks are kept where they were read:
// agent/precopy.go).
type capturedSeg struct {
	off  int64 // in the disk
	data []byte
}

// bytes is what the capture holds.
func (c *captured) bytes() int64 {
	var n int64
	for _, s := range c.segs {
		n += int64(len(s.data))
	}
	return n
}

// blocksOf is the whole blocks of size bs that the pages touch, as
// ascending, coalesced ranges clipped to size.
func blocksOf(pages []track.Range, bs, size int64) []snapshot.Range {
	var out []snapshot.Range
	for _, p := range pages {
		lo := p.Offset / bs * bs
		hi := min((p.Offset+p.Length+bs-1)/bs*bs, size)
		if lo >= hi {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length >= lo {
			out[n-1].Length = max(out[n-1].Length, hi-out[n-1].Offset)
			continue
		}
		out = append(out, snapshot.Range{Offset: lo, Length: hi - lo})
	}
	return out
}

// capturedBytes is what capturing pages in blocks of bs costs.
func capturedBytes(pages []track.Range, bs, size int64) int64 {
	var n int64
	for _, r := range blocksOf(pages, bs, size) {
		n += r.Length
	}
	return n
}

// capture reads the blocks the pages touch from f (a frozen file of size
// bytes). It stops with an error when stop says so (the freeze ran out).
func capture(f io.ReaderAt, pages []track.Range, bs, size int64, stop func() bool) (*captured, error) {
	c := &captured{size: size}
	blocks := blocksOf(pages, bs, size)
	total := 0
	for _, r := range blocks {
		total += int(r.Length)
	}
	buf := make([]byte, total)
	at := 0
	for _, r := range blocks {
		if stop() {
			return nil, fmt.Errorf("the freeze ran out with %d of %d bytes read", at, total)
		}
		n := int(r.Length)
		if _, err := f.ReadAt(buf[at:at+n], r.Offset); err != nil && err != io.EOF {
			return nil, err
		}
		c.segs = append(c.segs, capturedSeg{off: r.Offset, data: buf[at : at+n]})
		at += n
	}
	for _, p := range pages {
		if p.Offset >= size {
			continue
		}
		c.changed = append(c.changed, snapshot.Range{Offset: p.Offset, Length: min(p.Length, size-p.Offset)})
	}
	return c, nil
}

// ReadAt reads captured bytes; a read outside them is a bug in the caller
// (it would mix the frozen instant with the live file), so it fails.
func (c *captured) ReadAt(p []byte, off int64) (int, error) {
	i := sort.Search(len(c.segs), func(i int) bool { return c.segs[i].off+int64(len(c.segs[i].data)) > off })
	if i == len(c.segs) || c.segs[i].off > off || off+int64(len(p)) > c.segs[i].off+int64(len(c.segs[i].data)) {
		return 0, fmt.Errorf("read of %d bytes at %d outside the blocks captured in the freeze", len(p), off)
	}
	s := c.segs[i]
	return copy(p, s.data[off-s.off:]), nil
}

// block is the captured bytes of [off, off+n), if one segment holds them.
func (c *captured) block(off, n int64) ([]byte, bool) {
	i := sort.Search(len(c.segs), func(i int) bool { return c.segs[i].off+int64(len(c.segs[i].data)) > off })
	if i == len(c.segs) || c.segs[i].off > off || off+n > c.segs[i].off+int64(len(c.segs[i].data)) {
		return nil, false
	}
	s := c.segs[i]
	return s.data[off-s.off : off-s.off+n], true
}

func (c *captured) Size() int64 { return c.size }

func (c *captured) Extents(context.Context) ([]disk.Extent, error) {
	out := make([]disk.Extent, len(c.segs))
	for i, s := range c.segs {
		out[i] = disk.Extent{Offset: s.off, Length: int64(len(s.data))}
	}
	return out, nil
}

func (c *captured) Format() disk.Format { return disk.FormatRaw }

func (c *captured) Close() error { c.segs = nil; return nil }
