package ingest

import (
	"context"
	"io"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/storage"
)

// ServeHashes streams the content hashes of a disk's newest state (the
// pending point included) for an agent's hash resync: HashRun frames of
// consecutive stored blocks; blocks never written are zero and not sent.
// With pendingOnly, only the blocks the pending point itself stored are
// sent (a resumed cycle rechecks them: their acks may have been lost).
func (g *Ingest) ServeHashes(ctx context.Context, agentID string, cycleID uint64, diskIndex uint16, pendingOnly bool, st io.Writer) error {
	c, err := g.cycleFor(ctx, agentID, cycleID)
	if err != nil {
		return err
	}
	if int(diskIndex) >= len(c.disks) {
		return protocol.Errorf(protocol.CodeInvalid, "disk %d of %d", diskIndex, len(c.disks))
	}
	fw := frame.NewWriter(st)
	run := data.HashRun{Disk: diskIndex}
	var runs uint32
	flush := func() error {
		if len(run.Zero) == 0 {
			return nil
		}
		if err := fw.WriteAppend(data.FrameHashes, run.Append); err != nil {
			return err
		}
		runs++
		run.Zero, run.Hashes = run.Zero[:0], run.Hashes[:0]
		return nil
	}
	each := func(fn storage.BlockFunc) error {
		return g.repo.HeadBlocks(ctx, c.machine, c.disks[diskIndex].Name, fn)
	}
	if pendingOnly {
		p, err := g.repo.PendingPoint(ctx, c.machine)
		if err != nil {
			return err
		}
		each = func(fn storage.BlockFunc) error { return p.Blocks(ctx, c.disks[diskIndex].Name, fn) }
	}
	// Blocks whose chunk was found damaged are left out, like blocks never
	// written: the agent's content differs and is sent again.
	damaged, err := g.repo.DamagedHashes(ctx)
	if err != nil {
		return err
	}
	err = each(func(block int64, h storage.Hash, zero bool) error {
		if !zero && damaged[h] {
			return nil
		}
		if len(run.Zero) > 0 && (uint64(block) != run.Start+uint64(len(run.Zero)) || len(run.Zero) == data.MaxEntriesPerFrame) {
			if err := flush(); err != nil {
				return err
			}
		}
		if len(run.Zero) == 0 {
			run.Start = uint64(block)
		}
		run.Zero = append(run.Zero, zero)
		run.Hashes = append(run.Hashes, data.Hash(h))
		return nil
	})
	if err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	// A Barrier closes the stream: Seq counts the runs sent, so a cut
	// stream is never taken for a complete one.
	if err := fw.WriteAppend(data.FrameBarrier, (&data.Barrier{Cycle: cycleID, Seq: runs}).Append); err != nil {
		return err
	}
	return fw.Flush()
}

// ServeSummary answers a summary resync (protocol v2, docs/protocol.md
// §6.9): SumRun frames of whole groups of the disk's newest state (every
// group holding any stored block; the rest are zero), a Barrier; then, for
// each VerifyRun the agent sends back, a Verified frame saying which
// groups' digests differ from the controller's, and a closing Barrier.
func (g *Ingest) ServeSummary(ctx context.Context, agentID string, cycleID uint64, diskIndex uint16, fr *frame.Reader, st io.Writer) error {
	c, err := g.cycleFor(ctx, agentID, cycleID)
	if err != nil {
		return err
	}
	if int(diskIndex) >= len(c.disks) {
		return protocol.Errorf(protocol.CodeInvalid, "disk %d of %d", diskIndex, len(c.disks))
	}
	disk := c.disks[diskIndex].Name
	// The same damaged set serves both passes, so a block left out of
	// the summary is left out of the digests too.
	damaged, err := g.repo.DamagedHashes(ctx)
	if err != nil {
		return err
	}
	// groups walks the newest state group by group: fn gets each group
	// holding any stored block, its blocks' zero flags and hashes (blocks
	// never written, or whose chunk is damaged, are zero).
	groups := func(fn func(first uint64, zero []bool, hashes []data.Hash) error) error {
		zero := make([]bool, data.GroupBlocks)
		hashes := make([]data.Hash, data.GroupBlocks)
		cur, open := uint64(0), false
		emit := func() error {
			if !open {
				return nil
			}
			open = false
			return fn(cur, zero, hashes)
		}
		err := g.repo.HeadBlocks(ctx, c.machine, disk, func(block int64, h storage.Hash, z bool) error {
			first := uint64(block) / data.GroupBlocks * data.GroupBlocks
			if open && first != cur {
				if err := emit(); err != nil {
					return err
				}
			}
			if !open {
				cur, open = first, true
				for i := range zero {
					zero[i], hashes[i] = true, data.Hash{}
				}
			}
			if z || damaged[h] {
				return nil
			}
			i := uint64(block) - first
			zero[i], hashes[i] = false, data.Hash(h)
			return nil
		})
		if err != nil {
			return err
		}
		return emit()
	}

	fw := frame.NewWriter(st)
	run := data.SumRun{Disk: diskIndex}
	var runs uint32
	flush := func() error {
		if len(run.Zero) == 0 {
			return nil
		}
		if err := fw.WriteAppend(data.FrameSummary, run.Append); err != nil {
			return err
		}
		runs++
		run.Zero, run.Prints = run.Zero[:0], run.Prints[:0]
		return nil
	}
	err = groups(func(first uint64, zero []bool, hashes []data.Hash) error {
		if len(run.Zero) > 0 && (first != run.Start+uint64(len(run.Zero)) || len(run.Zero) == data.MaxEntriesPerFrame) {
			if err := flush(); err != nil {
				return err
			}
		}
		if len(run.Zero) == 0 {
			run.Start = first
		}
		for i := range zero {
			var p data.Print
			if !zero[i] {
				p = data.PrintOf(hashes[i])
			}
			run.Zero, run.Prints = append(run.Zero, zero[i]), append(run.Prints, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	if err := fw.WriteAppend(data.FrameBarrier, (&data.Barrier{Cycle: cycleID, Seq: runs}).Append); err != nil {
		return err
	}
	if err := fw.Flush(); err != nil {
		return err
	}

	// The agent's claims, one VerifyRun per SumRun, in the same order.
	type claim struct {
		start uint64
		n     int
	}
	checks := map[uint64]data.GroupCheck{} // by first block
	var order []claim
	for {
		typ, payload, err := fr.Next()
		if err != nil {
			return err
		}
		if typ == data.FrameBarrier {
			var b data.Barrier
			if err := b.Decode(payload); err != nil {
				return err
			}
			if b.Seq != uint32(len(order)) || len(order) != int(runs) {
				return protocol.Errorf(protocol.CodeInvalid, "%d verify runs announced, %d received, %d summary runs sent", b.Seq, len(order), runs)
			}
			break
		}
		if typ != data.FrameVerify {
			return protocol.Errorf(protocol.CodeInvalid, "unexpected frame %d on a summary resync", typ)
		}
		var v data.VerifyRun
		if err := v.Decode(payload); err != nil {
			return err
		}
		if v.Disk != diskIndex {
			return protocol.Errorf(protocol.CodeInvalid, "verify run of disk %d on a summary of disk %d", v.Disk, diskIndex)
		}
		for i, gc := range v.Groups {
			first := v.Start + uint64(i)*data.GroupBlocks
			if _, dup := checks[first]; dup {
				return protocol.Errorf(protocol.CodeInvalid, "group at block %d verified twice", first)
			}
			checks[first] = gc
		}
		order = append(order, claim{v.Start, len(v.Groups)})
	}
	mismatch := map[uint64]bool{}
	visited := map[uint64]bool{}
	dg := data.NewGroupDigest(diskIndex, 0)
	digest := func(first uint64, differ uint64, zero []bool, hashes []data.Hash) data.Hash {
		dg.Reset(diskIndex, first)
		for i := range data.GroupBlocks {
			switch {
			case differ&(1<<i) != 0:
				dg.Skip()
			case zero == nil || zero[i]:
				dg.Zero()
			default:
				dg.Block(hashes[i])
			}
		}
		return dg.Sum()
	}
	err = groups(func(first uint64, zero []bool, hashes []data.Hash) error {
		gc, ok := checks[first]
		if !ok {
			return nil // a group the agent did not claim is never taken for equal
		}
		visited[first] = true
		mismatch[first] = digest(first, gc.Differ, zero, hashes) != gc.Digest
		return nil
	})
	if err != nil {
		return err
	}
	for _, cl := range order {
		v := data.Verified{Disk: diskIndex, Start: cl.start}
		for i := range cl.n {
			first := cl.start + uint64(i)*data.GroupBlocks
			m := mismatch[first]
			if !visited[first] {
				// The controller holds nothing of this group now: all zero.
				m = digest(first, checks[first].Differ, nil, nil) != checks[first].Digest
			}
			v.Mismatch = append(v.Mismatch, m)
		}
		if err := fw.WriteAppend(data.FrameVerified, v.Append); err != nil {
			return err
		}
	}
	if err := fw.WriteAppend(data.FrameBarrier, (&data.Barrier{Cycle: cycleID, Seq: uint32(len(order))}).Append); err != nil {
		return err
	}
	return fw.Flush()
}
