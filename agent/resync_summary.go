package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/agent/blockmap"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
)

// sumBlock is one block of a group the controller summarized.
type sumBlock struct {
	block int64
	zero  bool
	print data.Print
	run   int // index of its SumRun
}

// sumExtent is a SumRun's extent as received.
type sumExtent struct {
	start  uint64
	groups int
}

// resyncSummary is resync on a protocol v2 session (docs/protocol.md
// §6.9): the controller sends 4-byte fingerprints of the blocks of every
// group it holds anything of; a block whose zero-ness or fingerprint
// differs is certainly different and is sent; the others are only
// probably equal, so each group's strong digest (BLAKE3 over the BLAKE3
// hashes of the blocks taken for equal) goes back to the controller,
// which checks it against its own hashes. A group that fails (a
// fingerprint collision) has all its blocks sent. Blocks of groups the
// controller holds nothing of are zero there, compared as such. The wire
// carries about 4.8 bytes per block of the disk instead of 33. Probably
// equal blocks enter the map as they are read (the agent keeps no list of
// them: 0.6 B per block of claims is all it holds) and are set Unknown
// again when their group fails, before the cycle begins; the map was
// reset first, so a crash in between makes the next cycle resync again.
func (a *Agent) resyncSummary(ctx context.Context, cycle int64, idx uint16, d *cycleDisk) ([]int64, error) {
	sess, _ := a.currentSession()
	if sess == nil {
		return nil, protocol.Errorf(protocol.CodeUnavailable, "not connected")
	}
	st, err := sess.Open(ctx, protocol.KindHashes)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	return resyncSummaryOn(ctx, st, cycle, idx, d)
}

// resyncSummaryOn runs the agent's side of a summary resync on an open
// hashes stream.
func resyncSummaryOn(ctx context.Context, st io.ReadWriter, cycle int64, idx uint16, d *cycleDisk) ([]int64, error) {
	body, _ := json.Marshal(msg.HashesRequest{Cycle: cycle, Disk: idx, Summary: true})
	fw := frame.NewWriter(st)
	if err := fw.Write(msg.FrameHashesRequest, body); err != nil {
		return nil, err
	}
	if err := fw.Flush(); err != nil {
		return nil, err
	}
	fr := frame.NewReader(st, data.MaxFrameSize)
	ctrl := make(chan sumBlock, 4096)
	errc := make(chan error, 1)
	var extents []sumExtent // the reader's, read once errc said it ended
	// On an early return the reader stops at its next block (rctx) or,
	// blocked on the stream, when the caller closes it.
	rctx, stopReader := context.WithCancel(ctx)
	defer stopReader()
	go func() {
		defer close(ctrl)
		errc <- readSummary(rctx, fr, idx, ctrl, &extents)
	}()

	if err := d.m.Reset(); err != nil {
		stopReader()
		return nil, err
	}
	ext, err := d.src.Extents(ctx)
	if err != nil {
		stopReader()
		return nil, err
	}
	buf := make([]byte, d.bs)
	var dirty []int64
	var set []blockmap.Entry
	dg := data.NewGroupDigest(idx, 0)
	var differ uint64
	var claims [][]data.GroupCheck // per SumRun, a claim per group
	// account adds a summarized block to its group; the group's claim is
	// made at its last block.
	account := func(c sumBlock, diff bool, strong *data.Hash, e *blockmap.Entry) {
		first := uint64(c.block) / data.GroupBlocks * data.GroupBlocks
		i := uint64(c.block) - first
		if i == 0 {
			dg.Reset(idx, first)
			differ = 0
		}
		switch {
		case diff:
			differ |= 1 << i
			dg.Skip()
		case strong == nil:
			dg.Zero()
		default:
			dg.Block(*strong)
		}
		if e != nil {
			// Probably equal: entered now, undone below if its group's
			// digest fails (before the cycle begins; a crash meanwhile
			// leaves the map reset, so the next cycle resyncs again).
			set = append(set, *e)
		}
		if i == data.GroupBlocks-1 {
			for len(claims) <= c.run {
				claims = append(claims, nil)
			}
			claims[c.run] = append(claims[c.run], data.GroupCheck{Differ: differ, Digest: dg.Sum()})
		}
	}
	next, more := <-ctrl
	e := 0
	n := d.m.Len()
	for b := int64(0); b < n; b++ {
		d.compared(b)
		summarized := more && next.block == b
		lo, hi := b*int64(d.bs), (b+1)*int64(d.bs)
		for e < len(ext) && ext[e].Offset+ext[e].Length <= lo {
			e++
		}
		allocated := e < len(ext) && ext[e].Offset < hi
		if !allocated && (!summarized || next.zero) {
			if summarized {
				account(next, false, nil, nil) // zero on both sides
				next, more = <-ctrl
			}
			continue
		}
		var h blockmap.Hash
		if allocated {
			k, err := d.src.ReadAt(buf, lo)
			if err != nil && !errors.Is(err, io.EOF) {
				stopReader()
				return nil, err
			}
			clear(buf[k:])
			h = blockmap.Sum(buf)
		}
		switch {
		case !summarized:
			// The controller holds nothing of this group: zero there.
			if h != blockmap.ZeroHash {
				set = append(set, blockmap.Entry{Block: b, Hash: blockmap.Unknown})
				dirty = append(dirty, b)
			}
		case h == blockmap.ZeroHash && next.zero:
			account(next, false, nil, nil)
		case h == blockmap.ZeroHash || next.zero:
			account(next, true, nil, nil)
			set = append(set, blockmap.Entry{Block: b, Hash: blockmap.Unknown})
			dirty = append(dirty, b)
		default:
			strong := data.Hash(blake3.Sum256(buf))
			if data.PrintOf(strong) != next.print {
				account(next, true, nil, nil)
				set = append(set, blockmap.Entry{Block: b, Hash: blockmap.Unknown})
				dirty = append(dirty, b)
			} else {
				account(next, false, &strong, &blockmap.Entry{Block: b, Hash: h})
			}
		}
		if summarized {
			next, more = <-ctrl
		}
		if len(set) >= 4096 {
			if err := d.m.Set(set...); err != nil {
				stopReader()
				return nil, err
			}
			set = set[:0]
		}
	}
	// Blocks past the view's end in summarized groups: not compared.
	for ; more; next, more = <-ctrl {
		account(next, true, nil, nil)
	}
	if err := <-errc; err != nil {
		return nil, err
	}
	if len(claims) != len(extents) {
		return nil, fmt.Errorf("%w: %d summary runs, claims on %d", errCut, len(extents), len(claims))
	}
	for i, ex := range extents {
		if len(claims[i]) != ex.groups {
			return nil, fmt.Errorf("%w: summary run %d: %d groups claimed of %d", errCut, i, len(claims[i]), ex.groups)
		}
		v := data.VerifyRun{Disk: idx, Start: ex.start, Groups: claims[i]}
		if err := fw.WriteAppend(data.FrameVerify, v.Append); err != nil {
			return nil, err
		}
	}
	if err := fw.WriteAppend(data.FrameBarrier, (&data.Barrier{Cycle: uint64(cycle), Seq: uint32(len(extents))}).Append); err != nil {
		return nil, err
	}
	if err := fw.Flush(); err != nil {
		return nil, err
	}
	for i, ex := range extents {
		typ, payload, err := fr.Next()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errCut, err)
		}
		var v data.Verified
		if typ != data.FrameVerified {
			return nil, fmt.Errorf("%w: unexpected frame %d answering a verify run", protocol.ErrInvalid, typ)
		}
		if err := v.Decode(payload); err != nil {
			return nil, err
		}
		if v.Start != ex.start || len(v.Mismatch) != ex.groups {
			return nil, fmt.Errorf("%w: verdict %d on blocks %d+%d, claims on %d+%d", protocol.ErrInvalid, i,
				v.Start, len(v.Mismatch)*data.GroupBlocks, ex.start, ex.groups*data.GroupBlocks)
		}
		for g, bad := range v.Mismatch {
			if !bad {
				continue
			}
			// A fingerprint collided: none of the group is trusted; every
			// block not already declared different is sent.
			first := v.Start + uint64(g)*data.GroupBlocks
			for k := range uint64(data.GroupBlocks) {
				b := int64(first + k)
				if claims[i][g].Differ&(1<<k) != 0 || b >= n {
					continue
				}
				set = append(set, blockmap.Entry{Block: b, Hash: blockmap.Unknown})
				dirty = append(dirty, b)
			}
		}
	}
	typ, payload, err := fr.Next()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errCut, err)
	}
	var bar data.Barrier
	if typ != data.FrameBarrier {
		return nil, fmt.Errorf("%w: unexpected frame %d closing a summary resync", protocol.ErrInvalid, typ)
	}
	if err := bar.Decode(payload); err != nil {
		return nil, err
	}
	if bar.Seq != uint32(len(extents)) {
		return nil, fmt.Errorf("%w: %d verdicts announced, %d received", errCut, bar.Seq, len(extents))
	}
	if err := d.m.Set(set...); err != nil {
		return nil, err
	}
	slices.Sort(dirty)
	return dirty, nil
}

// readSummary decodes the controller's SumRun frames until their closing
// barrier, sending each block on out (ascending) and recording each run's
// extent in extents.
func readSummary(ctx context.Context, fr *frame.Reader, disk uint16, out chan<- sumBlock, extents *[]sumExtent) error {
	var run data.SumRun
	var end uint64
	for {
		typ, payload, err := fr.Next()
		if err != nil {
			return fmt.Errorf("%w: %v", errCut, err)
		}
		switch typ {
		case data.FrameSummary:
			if err := run.Decode(payload); err != nil {
				return err
			}
			if run.Disk != disk || (len(*extents) > 0 && run.Start < end) {
				return fmt.Errorf("%w: summary run of disk %d from block %d (disk %d, after block %d)", protocol.ErrInvalid, run.Disk, run.Start, disk, end)
			}
			end = run.Start + uint64(len(run.Zero))
			ri := len(*extents)
			*extents = append(*extents, sumExtent{start: run.Start, groups: len(run.Zero) / data.GroupBlocks})
			for i := range run.Zero {
				select {
				case out <- sumBlock{block: int64(run.Start) + int64(i), zero: run.Zero[i], print: run.Prints[i], run: ri}:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		case data.FrameBarrier:
			var b data.Barrier
			if err := b.Decode(payload); err != nil {
				return err
			}
			if b.Seq != uint32(len(*extents)) {
				return fmt.Errorf("%w: %d runs announced, %d received", errCut, b.Seq, len(*extents))
			}
			return nil
		default:
			return fmt.Errorf("%w: unexpected frame %d on a summary resync", protocol.ErrInvalid, typ)
		}
	}
}
