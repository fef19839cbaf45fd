package agent

import (
	"fmt"
	"slices"

	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/agent/track"
	"github.com/ferrydr/ferry/protocol/msg"
)

// A tracked freeze reads the changed blocks while the filesystems are
// frozen, and every writer waits for it. A converging pre-copy shortens
// that wait: while the machine runs, the trackers are cut and the blocks
// they name are read; each later round reads only what the round before
// it left dirty, for as long as that shrinks; the freeze then reads only
// the last round's remainder. The point is the pre-copied blocks with the
// ones read in the freeze laid over them.
//
// Why a block read while it is being written is still right: the tracker
// marks a write when it completes (bdtrack marks on submission and
// completion; agent/track marks at the write), so a write that lands on a
// block after the cut that named it is named again by a later cut, and
// the block is read again after it — in a later round or in the freeze.
// Every cut's blocks are read after that cut, and the freeze's read is
// last: each block's last read follows its last write before the freeze.
const (
	// maxPrecopyRounds bounds the rounds before one freeze.
	maxPrecopyRounds = 4
	// maxFreezeTries: a freeze whose blocks cannot be read within
	// --max-freeze is thawed and, after another pre-copy, tried again;
	// after this many tries the cycle's view is made without it.
	maxFreezeTries = 3
)

// precopy is what the rounds before a freeze read, per disk.
type precopy struct {
	off     string // why the pre-copy is not used ("" when it is)
	started bool   // a round has read the cuts' whole pending set
	disks   []precopyDisk
	rounds  int   // rounds that read
	read    int64 // bytes read in them
}

type precopyDisk struct {
	bs     int64
	blocks map[int64][]byte // block offset → its bytes as last read
	// carry is what cuts named and no read has taken yet: the freeze
	// (or the next round) reads it.
	carry []track.Range
}

func newPrecopy(cfg msg.MachineConfig) *precopy {
	p := &precopy{disks: make([]precopyDisk, len(cfg.Disks))}
	for i, dc := range cfg.Disks {
		p.disks[i] = precopyDisk{bs: int64(dc.BlockSize), blocks: map[int64][]byte{}}
	}
	return p
}

// cutAll cuts every disk's tracker and says why the cuts cannot be used
// alone ("" when they can): the same judgement in a round and in the
// freeze.
func cutAll(disks []*trackedDisk) ([]track.Cut, string) {
	cuts := make([]track.Cut, len(disks))
	var why string
	for i, d := range disks {
		c, err := d.t.Cut()
		if err != nil && why == "" {
			why = err.Error()
		}
		cuts[i] = c
	}
	if why != "" {
		return cuts, why
	}
	for _, c := range cuts {
		switch {
		case c.Lost != "":
			return cuts, "write tracking lost its window: " + c.Lost
		case c.Base == 0:
			return cuts, "write tracking has just started"
		case c.Base != cuts[0].Base:
			return cuts, "the disks' trackers count from different points"
		}
	}
	return cuts, ""
}

// toRead is what must be read after cut c of disk i: everything pending
// when nothing has been read yet, else what was left over and what the
// cut's own window adds.
func (p *precopy) toRead(i int, c track.Cut) []track.Range {
	if p.off != "" || !p.started {
		return c.Ranges
	}
	return mergeRanges(p.disks[i].carry, c.Fresh)
}

// run reads while the machine runs, round after round, for as long as
// each round has less to read than the one before. It stops at the first
// round that would not shrink, leaving that round's blocks to the freeze.
func (p *precopy) run(a *Agent, cfg msg.MachineConfig, disks []*trackedDisk, readers []frozenReader) {
	last := int64(-1)
	for round := 0; round < maxPrecopyRounds && p.off == ""; round++ {
		cuts, why := cutAll(disks)
		if why != "" {
			p.off = why
			return
		}
		reads := make([][]track.Range, len(disks))
		sizes := make([]int64, len(disks))
		var n, pending int64
		for i, c := range cuts {
			reads[i] = p.toRead(i, c)
			sizes[i] = readers[i].Size()
			n += capturedBytes(reads[i], p.disks[i].bs, sizes[i])
			pending += capturedBytes(c.Ranges, p.disks[i].bs, sizes[i])
		}
		p.started = true
		for i := range p.disks {
			p.disks[i].carry = reads[i]
		}
		if pending > a.cfg.MaxCapture {
			// The freeze will find the same and fall back.
			p.off = fmt.Sprintf("%d changed bytes exceed what one capture may hold (%d)", pending, a.cfg.MaxCapture)
			return
		}
		if n == 0 || (last >= 0 && n >= last) || p.read+n > a.cfg.MaxCapture {
			return // not converging (or nothing left): the freeze reads it
		}
		for i := range p.disks {
			c, err := capture(readers[i], reads[i], p.disks[i].bs, sizes[i], func() bool { return false })
			if err != nil {
				p.off = "the pre-copy's read failed: " + err.Error()
				return
			}
			p.disks[i].keep(c)
			p.disks[i].carry = nil
		}
		p.rounds++
		p.read += n
		last = n
	}
}

// keep records the blocks of c as the newest read of each.
func (d *precopyDisk) keep(c *captured) {
	for _, s := range c.segs {
		for o := 0; o < len(s.data); o += int(d.bs) {
			end := min(o+int(d.bs), len(s.data))
			d.blocks[s.off+int64(o)] = s.data[o:end]
		}
	}
}

// compose is disk i's view: the blocks pending at the freeze's cut
// (pages), each from the freeze's read (final) when it has it, else from
// the pre-copy. Nothing is copied: the segments are the reads' own
// buffers, so a capture holds at most what its reads did. A block found
// in neither is a bug; the capture is then not used.
func (p *precopy) compose(i int, pages []track.Range, final *captured, size int64) (*captured, error) {
	if p.off != "" || p.rounds == 0 {
		return final, nil // the freeze read every pending block
	}
	d := &p.disks[i]
	c := &captured{size: size}
	for _, r := range blocksOf(pages, d.bs, size) {
		for off := r.Offset; off < r.Offset+r.Length; off += d.bs {
			n := min(d.bs, r.Offset+r.Length-off)
			data, ok := final.block(off, n)
			if !ok {
				b, found := d.blocks[off]
				if !found || int64(len(b)) < n {
					return nil, fmt.Errorf("the block at %d of disk %d was neither pre-copied nor read in the freeze", off, i)
				}
				data = b[:n]
			}
			c.segs = append(c.segs, capturedSeg{off: off, data: data})
		}
	}
	for _, pg := range pages {
		if pg.Offset < size {
			c.changed = append(c.changed, snapshot.Range{Offset: pg.Offset, Length: min(pg.Length, size-pg.Offset)})
		}
	}
	return c, nil
}

// mergeRanges is the union of two sets of ranges, ascending and
// coalesced (blocksOf needs them ascending).
func mergeRanges(a, b []track.Range) []track.Range {
	all := slices.Concat(a, b)
	slices.SortFunc(all, func(x, y track.Range) int {
		switch {
		case x.Offset < y.Offset:
			return -1
		case x.Offset > y.Offset:
			return 1
		}
		return 0
	})
	var out []track.Range
	for _, r := range all {
		if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length >= r.Offset {
			out[n-1].Length = max(out[n-1].Length, r.Offset+r.Length-out[n-1].Offset)
			continue
		}
		out = append(out, r)
	}
	return out
}
