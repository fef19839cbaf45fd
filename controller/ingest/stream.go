package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/storage"
)

// decoded is one frame read ahead of processing.
type decoded struct {
	typ      uint8
	manifest *data.Manifest
	batch    *data.Batch
	err      error
}

// ServeData runs one data stream of agentID: manifest parts are answered
// with Need, batches are stored durably and then acknowledged. A malformed
// or refused frame ends the stream with an error frame; the session and
// its other streams live on.
func (g *Ingest) ServeData(ctx context.Context, agentID string, st io.ReadWriter) error {
	fw := frame.NewWriter(st)
	frames := make(chan decoded, 2) // read and decode ahead of the storage writes
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer close(frames)
		fr := frame.NewReader(st, data.MaxFrameSize)
		for {
			typ, payload, err := fr.Next()
			d := decoded{typ: typ, err: err}
			if err == nil {
				switch typ {
				case data.FrameManifest:
					d.manifest = &data.Manifest{}
					d.err = d.manifest.Decode(payload)
				case data.FrameBatch:
					d.batch = &data.Batch{}
					if d.err = d.batch.Decode(payload); d.err == nil {
						// Decode slices the payload, which the reader reuses.
						for i := range d.batch.Blocks {
							d.batch.Blocks[i].Data = append([]byte(nil), d.batch.Blocks[i].Data...)
						}
					}
				default:
					d.err = protocol.Errorf(protocol.CodeInvalid, "unexpected frame type %d on a data stream", typ)
				}
			}
			select {
			case frames <- d:
			case <-ctx.Done():
				return
			}
			if d.err != nil {
				return
			}
		}
	}()
	for d := range frames {
		var err error
		switch {
		case d.err != nil:
			err = d.err
		case d.manifest != nil:
			err = g.manifest(ctx, agentID, fw, d.manifest)
		case d.batch != nil:
			err = g.batch(ctx, agentID, fw, d.batch)
		}
		if errors.Is(err, io.EOF) || errors.Is(d.err, io.EOF) {
			return nil // the agent closed the stream after its last ack
		}
		if err != nil {
			pe := protocol.AsError(err)
			g.log.Warn("data stream refused", "agent", agentID, "code", pe.Code, "err", pe.Message)
			fw.WriteError(pe)
			fw.Flush()
			return err
		}
	}
	return nil
}

func (g *Ingest) manifest(ctx context.Context, agentID string, fw *frame.Writer, m *data.Manifest) error {
	c, err := g.cycleFor(agentID, m.Cycle)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.parts[m.Part] {
		c.mu.Unlock()
		return protocol.Errorf(protocol.CodeInvalid, "cycle %d: manifest part %d sent twice", m.Cycle, m.Part)
	}
	c.mu.Unlock()
	var hashes []storage.Hash
	for _, e := range m.Entries {
		if int(e.Disk) >= len(c.disks) {
			return protocol.Errorf(protocol.CodeInvalid, "cycle %d: entry names disk %d of %d", m.Cycle, e.Disk, len(c.disks))
		}
		if d := c.disks[e.Disk]; int64(e.Block)*int64(d.BlockSize) >= max(d.Size, 1) {
			return protocol.Errorf(protocol.CodeInvalid, "cycle %d: block %d is beyond disk %s (%d bytes)", m.Cycle, e.Block, d.Name, d.Size)
		}
		if e.Flags&data.FlagZero == 0 {
			hashes = append(hashes, storage.Hash(e.Hash))
		}
	}
	have, err := g.repo.HasChunks(ctx, hashes)
	if err != nil {
		return err
	}
	need := data.Need{Cycle: m.Cycle, Part: m.Part, Need: make([]bool, len(m.Entries))}
	var writes []storage.BlockWrite
	var idx []int // entry index of each dedup write, to fall back to "needed"
	k := 0
	for i, e := range m.Entries {
		disk := c.disks[e.Disk].Name
		if e.Flags&data.FlagZero != 0 {
			writes = append(writes, storage.BlockWrite{Disk: disk, Block: int64(e.Block), Zero: true})
			idx = append(idx, -1)
			continue
		}
		if have[k] {
			writes = append(writes, storage.BlockWrite{Disk: disk, Block: int64(e.Block), Hash: storage.Hash(e.Hash)})
			idx = append(idx, i)
		} else {
			need.Need[i] = true
		}
		k++
	}
	if len(writes) > 0 {
		err := c.pending.Write(ctx, writes)
		if errors.Is(err, storage.ErrChunkMissing) {
			// GC removed a chunk between the lookup and the write: ask for
			// every deduplicated block of this part instead.
			var zeros []storage.BlockWrite
			for j, w := range writes {
				if idx[j] < 0 {
					zeros = append(zeros, w)
				} else {
					need.Need[idx[j]] = true
				}
			}
			err = c.pending.Write(ctx, zeros)
		}
		if err != nil {
			return err
		}
	}
	c.mu.Lock()
	c.parts[m.Part] = true
	c.entries += uint64(len(m.Entries))
	for i, e := range m.Entries {
		if need.Need[i] {
			c.outstanding[blockKey{e.Disk, e.Block}] = outstanding{hash: e.Hash}
		}
	}
	c.mu.Unlock()
	if err := fw.WriteAppend(data.FrameNeed, need.Append); err != nil {
		return err
	}
	return fw.Flush()
}

func (g *Ingest) batch(ctx context.Context, agentID string, fw *frame.Writer, b *data.Batch) error {
	c, err := g.cycleFor(agentID, b.Cycle)
	if err != nil {
		return err
	}
	writes := make([]storage.BlockWrite, 0, len(b.Blocks))
	c.mu.Lock()
	for i := range b.Blocks {
		blk := &b.Blocks[i]
		o, ok := c.outstanding[blockKey{blk.Disk, blk.Block}]
		if !ok || o.hash != blk.Hash {
			c.mu.Unlock()
			return protocol.Errorf(protocol.CodeInvalid, "cycle %d: block %d of disk %d was not announced with this hash", b.Cycle, blk.Block, blk.Disk)
		}
	}
	c.mu.Unlock()
	patched := false
	for i := range b.Blocks {
		blk := &b.Blocks[i]
		d := c.disks[blk.Disk]
		w := storage.BlockWrite{Disk: d.Name, Block: int64(blk.Block), Hash: storage.Hash(blk.Hash)}
		if blk.Flags&data.FlagPatch != 0 {
			plain, err := g.dec.Plain(nil, blk)
			if err != nil {
				return err
			}
			runs, err := data.DecodePatch(plain)
			if err != nil {
				return err
			}
			for _, r := range runs {
				if int(r.Offset)+len(r.Data) > d.BlockSize {
					return protocol.Errorf(protocol.CodeInvalid, "patch run beyond block size %d", d.BlockSize)
				}
				w.Patch = append(w.Patch, storage.PatchRun{Offset: int(r.Offset), Data: r.Data})
			}
			patched = true
		} else {
			if int(blk.PlainLen) != d.BlockSize {
				return protocol.Errorf(protocol.CodeInvalid, "block %d is %d bytes, disk %s has %d-byte blocks", blk.Block, blk.PlainLen, d.Name, d.BlockSize)
			}
			codec := storage.CodecNone
			if blk.Codec == data.CodecZstd {
				codec = storage.CodecZstd
			}
			w.Chunk = &storage.Chunk{Hash: storage.Hash(blk.Hash), Codec: codec, Data: blk.Data, PlainLen: int(blk.PlainLen)}
		}
		writes = append(writes, w)
	}
	if err := c.pending.Write(ctx, writes); err != nil {
		if errors.Is(err, storage.ErrHashMismatch) {
			code := protocol.CodeInvalid
			if patched {
				code = protocol.CodeFailedPrecondition // the patch base differed: resend whole blocks
			}
			return protocol.Errorf(code, "cycle %d batch %d: %v", b.Cycle, b.Seq, err)
		}
		return fmt.Errorf("store batch: %w", err)
	}
	c.mu.Lock()
	for i := range b.Blocks {
		delete(c.outstanding, blockKey{b.Blocks[i].Disk, b.Blocks[i].Block})
	}
	c.mu.Unlock()
	if err := fw.WriteAppend(data.FrameAck, (&data.Ack{Cycle: b.Cycle, Seq: b.Seq}).Append); err != nil {
		return err
	}
	return fw.Flush()
}
