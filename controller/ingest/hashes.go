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
