package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/agent/blockmap"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
)

// ctrlBlock is one block of the controller's newest state.
type ctrlBlock struct {
	block int64
	zero  bool
	hash  data.Hash
}

// resync rebuilds a disk's map from the controller's content hashes: every
// block of the view is compared with what the controller holds; equal
// blocks enter the map, differing ones are returned to be sent. It costs a
// read of the disk and no data on the wire beyond 33 bytes per stored block.
// On a protocol v2 session it is the summary resync instead (about 4.8
// bytes per block; resync_summary.go).
func (a *Agent) resync(ctx context.Context, cycle int64, idx uint16, d *cycleDisk) ([]int64, error) {
	if sess, _ := a.currentSession(); sess != nil && sess.Version() >= 2 {
		return a.resyncSummary(ctx, cycle, idx, d)
	}
	ctrl, errc, closeStream, err := a.openHashes(ctx, msg.HashesRequest{Cycle: cycle, Disk: idx})
	if err != nil {
		return nil, err
	}
	defer closeStream()

	if err := d.m.Reset(); err != nil {
		return nil, err
	}
	ext, err := d.src.Extents(ctx)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, d.bs)
	var dirty []int64
	next, more := <-ctrl
	e := 0
	n := d.m.Len()
	var set []blockmap.Entry
	for b := int64(0); b < n; b++ {
		d.compared(b)
		for more && next.block < b {
			next, more = <-ctrl // beyond the view's size: ignored
		}
		c := ctrlBlock{block: b, zero: true}
		if more && next.block == b {
			c = next
			next, more = <-ctrl
		}
		lo, hi := b*int64(d.bs), (b+1)*int64(d.bs)
		for e < len(ext) && ext[e].Offset+ext[e].Length <= lo {
			e++
		}
		allocated := e < len(ext) && ext[e].Offset < hi
		if !allocated && c.zero {
			continue // zero on both sides: the reset map already says so
		}
		var h blockmap.Hash
		if allocated {
			k, err := d.src.ReadAt(buf, lo)
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			clear(buf[k:])
			h = blockmap.Sum(buf)
		}
		switch {
		case h == blockmap.ZeroHash && c.zero:
			// equal: zero
		case h != blockmap.ZeroHash && !c.zero && data.Hash(blake3.Sum256(buf)) == c.hash:
			set = append(set, blockmap.Entry{Block: b, Hash: h})
		default:
			set = append(set, blockmap.Entry{Block: b, Hash: blockmap.Unknown})
			dirty = append(dirty, b)
		}
		if len(set) >= 4096 {
			if err := d.m.Set(set...); err != nil {
				return nil, err
			}
			set = set[:0]
		}
	}
	for more {
		next, more = <-ctrl
	}
	if err := <-errc; err != nil {
		return nil, err
	}
	if err := d.m.Set(set...); err != nil {
		return nil, err
	}
	return dirty, nil
}

// openHashes asks the controller for a disk's hashes (the whole newest
// state, or the pending point's own rows) and streams them, ascending, on
// the returned channel; the error channel says how the stream ended once
// the channel is closed.
func (a *Agent) openHashes(ctx context.Context, req msg.HashesRequest) (<-chan ctrlBlock, <-chan error, func(), error) {
	sess, _ := a.currentSession()
	if sess == nil {
		return nil, nil, nil, protocol.Errorf(protocol.CodeUnavailable, "not connected")
	}
	st, err := sess.Open(ctx, protocol.KindHashes)
	if err != nil {
		return nil, nil, nil, err
	}
	body, _ := json.Marshal(req)
	fw := frame.NewWriter(st)
	if err := fw.Write(msg.FrameHashesRequest, body); err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	if err := fw.Flush(); err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	ctrl := make(chan ctrlBlock, 4096)
	errc := make(chan error, 1)
	go func() {
		defer close(ctrl)
		errc <- readHashes(ctx, st, ctrl)
	}()
	return ctrl, errc, func() { st.Close() }, nil
}

// recheckPending handles a resumed cycle. Blocks the pending point already
// stored were acknowledged to this agent only if the ack arrived; one that
// did not may still hold its old value in the map while the controller
// holds the newer content. If the block then went back to the old value,
// nothing would resend it and the point would keep the newer content. So
// every block the pending point stored is marked unknown in the map and
// listed to be compared again (whole blocks: a patch would apply to the
// wrong base); unchanged content costs a manifest entry (the controller
// already holds the chunk), not its data.
func (a *Agent) recheckPending(ctx context.Context, cycle int64, idx uint16, d *cycleDisk) ([]int64, error) {
	ctrl, errc, closeStream, err := a.openHashes(ctx, msg.HashesRequest{Cycle: cycle, Disk: idx, Pending: true})
	if err != nil {
		return nil, err
	}
	defer closeStream()
	n := d.m.Len()
	var blocks []int64
	var set []blockmap.Entry
	for c := range ctrl {
		if c.block >= n {
			continue // beyond the view's size
		}
		blocks = append(blocks, c.block)
		set = append(set, blockmap.Entry{Block: c.block, Hash: blockmap.Unknown})
	}
	if err := <-errc; err != nil {
		return nil, err
	}
	if err := d.m.Set(set...); err != nil {
		return nil, err
	}
	return blocks, nil
}

// readHashes decodes the controller's hash runs until the closing barrier.
func readHashes(ctx context.Context, r io.Reader, out chan<- ctrlBlock) error {
	fr := frame.NewReader(r, data.MaxFrameSize)
	var runs uint32
	for {
		typ, payload, err := fr.Next()
		if err != nil {
			return fmt.Errorf("%w: %v", errCut, err)
		}
		switch typ {
		case data.FrameHashes:
			var h data.HashRun
			if err := h.Decode(payload); err != nil {
				return err
			}
			runs++
			for i := range h.Zero {
				select {
				case out <- ctrlBlock{block: int64(h.Start) + int64(i), zero: h.Zero[i], hash: h.Hashes[i]}:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		case data.FrameBarrier:
			var b data.Barrier
			if err := b.Decode(payload); err != nil {
				return err
			}
			if b.Seq != runs {
				return fmt.Errorf("%w: %d runs announced, %d received", errCut, b.Seq, runs)
			}
			return nil
		default:
			return fmt.Errorf("%w: unexpected frame %d on a hashes stream", protocol.ErrInvalid, typ)
		}
	}
}
