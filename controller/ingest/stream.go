package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"sync"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/storage"
)

// decoded is one frame read ahead of processing.
type decoded struct {
	manifest *data.Manifest
	batch    *data.Batch
	err      error
}

// replies serialises what a data stream sends back (Need, Ack, errors)
// from the handler and from commit callbacks, and remembers the first
// failure.
type replies struct {
	mu     sync.Mutex
	fw     *frame.Writer
	failed error
	stop   context.CancelFunc
	// needs are the stream's unanswered parts in manifest order: a Need
	// goes out only when every part before it on this stream was answered
	// (the sender matches answers to parts by order, and a part with
	// deduplicated rows waits for their commit while the next may not).
	needs []*queuedNeed
}

// queuedNeed is a part's answer, sent once ready and first in line.
type queuedNeed struct {
	need  *data.Need
	ready bool
}

// queueNeed reserves the next answer's place; call it in manifest order.
func (r *replies) queueNeed(n *data.Need) *queuedNeed {
	q := &queuedNeed{need: n}
	r.mu.Lock()
	r.needs = append(r.needs, q)
	r.mu.Unlock()
	return q
}

// needReady marks q answerable and sends every answer at the head of the
// line that is.
func (r *replies) needReady(q *queuedNeed) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q.ready = true
	for len(r.needs) > 0 && r.needs[0].ready {
		r.sendLocked(data.FrameNeed, r.needs[0].need)
		r.needs = r.needs[1:]
	}
}

func (r *replies) send(typ uint8, m interface{ Append([]byte) []byte }) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sendLocked(typ, m)
}

func (r *replies) sendLocked(typ uint8, m interface{ Append([]byte) []byte }) {
	if r.failed != nil {
		return
	}
	if err := r.fw.WriteAppend(typ, m.Append); err == nil {
		err = r.fw.Flush()
		if err != nil {
			r.failed = err
			r.stop()
		}
	} else {
		r.failed = err
		r.stop()
	}
}

// fail sends an error frame (once) and ends the stream.
func (r *replies) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failed != nil {
		return
	}
	r.failed = err
	r.fw.WriteError(protocol.AsError(err))
	r.fw.Flush()
	r.stop()
}

func (r *replies) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

// ServeData runs one data stream of agentID: manifest parts are answered
// with Need once their zero and deduplicated rows are durable; batches are
// verified, stored durably (group commit with the cycle's other streams)
// and then acknowledged. A malformed or refused frame ends the stream with
// an error frame.
func (g *Ingest) ServeData(ctx context.Context, agentID string, st io.ReadWriter) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rep := &replies{fw: frame.NewWriter(st), stop: cancel}
	frames := make(chan decoded, 4) // read and decode ahead of the storage writes
	go func() {
		defer close(frames)
		fr := frame.NewPooledReader(st, data.MaxFrameSize)
		// Only this goroutine reads, and nothing sent on frames aliases a
		// payload (the next Next would overwrite it as well).
		defer fr.Release()
		for {
			typ, payload, err := fr.Next()
			var d decoded
			switch {
			case err != nil:
				d.err = err
			case typ == data.FrameManifest:
				d.manifest = &data.Manifest{}
				d.err = d.manifest.Decode(payload)
			case typ == data.FrameBatch:
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
	var err error
	for d := range untilDone(ctx, frames) {
		switch {
		case d.err != nil:
			err = d.err
		case d.manifest != nil:
			err = g.manifest(ctx, agentID, rep, d.manifest)
		case d.batch != nil:
			err = g.batch(ctx, agentID, rep, d.batch)
		}
		if errors.Is(err, io.EOF) {
			err = nil // the agent closed the stream after its last ack
			break
		}
		if err != nil {
			break
		}
		if e := rep.err(); e != nil {
			err = e
			break
		}
	}
	if err == nil {
		err = rep.err()
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		pe := protocol.AsError(err)
		g.log.Warn("data stream refused", "agent", agentID, "code", pe.Code, "err", pe.Message)
		rep.fail(err)
		return err
	}
	return nil
}

func (g *Ingest) manifest(ctx context.Context, agentID string, rep *replies, m *data.Manifest) error {
	c, err := g.cycleFor(ctx, agentID, m.Cycle)
	if err != nil {
		return err
	}
	var hashes []storage.Hash
	for _, e := range m.Entries {
		if int(e.Disk) >= len(c.disks) {
			return protocol.Errorf(protocol.CodeInvalid, "cycle %d: entry names disk %d of %d", m.Cycle, e.Disk, len(c.disks))
		}
		if d := c.disks[e.Disk]; e.Block >= uint64(blocksOf(d)) {
			// Compared in blocks: a huge block number times the block
			// size would overflow and pass.
			return protocol.Errorf(protocol.CodeInvalid, "cycle %d: block %d is beyond disk %s (%d bytes)", m.Cycle, e.Block, d.Name, d.Size)
		}
		if e.Flags&data.FlagZero == 0 {
			hashes = append(hashes, storage.Hash(e.Hash))
		}
	}
	// Only chunks the agent possesses deduplicate: stored in a point of a
	// machine it acts for. Any other hash is asked for like new content.
	have, err := g.repo.HasChunksOf(ctx, c.owners, hashes)
	if err != nil {
		return err
	}
	need := &data.Need{Cycle: m.Cycle, Part: m.Part, Need: make([]bool, len(m.Entries))}
	var writes []storage.BlockWrite
	var dedup []int // entry index of each write; -1 for zero writes
	k := 0
	for i, e := range m.Entries {
		disk := c.disks[e.Disk].Name
		if e.Flags&data.FlagZero != 0 {
			writes = append(writes, storage.BlockWrite{Disk: disk, Block: int64(e.Block), Zero: true})
			dedup = append(dedup, -1)
			continue
		}
		if have[k] {
			writes = append(writes, storage.BlockWrite{Disk: disk, Block: int64(e.Block), Hash: storage.Hash(e.Hash)})
			dedup = append(dedup, i)
		} else {
			need.Need[i] = true
		}
		k++
	}
	c.mu.Lock()
	if c.parts[m.Part] {
		c.mu.Unlock()
		return protocol.Errorf(protocol.CodeInvalid, "cycle %d: manifest part %d sent twice", m.Cycle, m.Part)
	}
	c.parts[m.Part] = true
	c.entries += uint64(len(m.Entries))
	for i, e := range m.Entries {
		if need.Need[i] {
			c.outstanding[blockKey{e.Disk, e.Block}] = outstanding{hash: e.Hash}
		}
	}
	c.mu.Unlock()
	q := rep.queueNeed(need)
	if len(writes) == 0 {
		rep.needReady(q)
		return nil
	}
	return c.commits.submit(ctx, writes, 0, func(err error) {
		if errors.Is(err, storage.ErrChunkMissing) {
			// GC removed a chunk between the lookup and the write: ask for
			// every deduplicated block of this part instead.
			var zeros []storage.BlockWrite
			c.mu.Lock()
			for j, w := range writes {
				if dedup[j] < 0 {
					zeros = append(zeros, w)
					continue
				}
				e := m.Entries[dedup[j]]
				need.Need[dedup[j]] = true
				c.outstanding[blockKey{e.Disk, e.Block}] = outstanding{hash: e.Hash}
			}
			c.mu.Unlock()
			err = c.commits.submit(ctx, zeros, 0, func(err error) { g.answered(c, rep, err, func() { rep.needReady(q) }) })
			if err != nil {
				g.answered(c, rep, err, nil)
			}
			return
		}
		g.answered(c, rep, err, func() { rep.needReady(q) })
	})
}

// answered runs ok after a durable write, or fails the cycle and stream.
func (g *Ingest) answered(c *cycle, rep *replies, err error, ok func()) {
	if err != nil {
		c.fail(err)
		rep.fail(err)
		return
	}
	if ok != nil {
		ok()
	}
}

func (g *Ingest) batch(ctx context.Context, agentID string, rep *replies, b *data.Batch) error {
	c, err := g.cycleFor(ctx, agentID, b.Cycle)
	if err != nil {
		return err
	}
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
	writes := make([]storage.BlockWrite, 0, len(b.Blocks))
	patched, bytes := false, 0
	for i := range b.Blocks {
		blk := &b.Blocks[i]
		d := c.disks[blk.Disk]
		w := storage.BlockWrite{Disk: d.Name, Block: int64(blk.Block), Hash: storage.Hash(blk.Hash)}
		bytes += len(blk.Data)
		if blk.Flags&data.FlagSealed != 0 {
			return protocol.Errorf(protocol.CodeInvalid, "cycle %d: block %d of disk %d is sealed (only restore streams carry sealed blocks)", b.Cycle, blk.Block, blk.Disk)
		}
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
			// Handed over decoded (the repository does not decode it
			// again) and as it arrived: the repository stores the patch
			// in its codec (docs/storage-format.md "Patch records"), its
			// encoding being the repository's.
			if w.PatchData, err = g.chunk(blk); err != nil {
				return err
			}
			patched = true
		} else {
			if int(blk.PlainLen) != d.BlockSize {
				return protocol.Errorf(protocol.CodeInvalid, "block %d is %d bytes, disk %s has %d-byte blocks", blk.Block, blk.PlainLen, d.Name, d.BlockSize)
			}
			chunk, err := g.chunk(blk)
			if err != nil {
				return err
			}
			w.Chunk = chunk
		}
		writes = append(writes, w)
	}
	ack := &data.Ack{Cycle: b.Cycle, Seq: b.Seq}
	return c.commits.submit(ctx, writes, bytes, func(err error) {
		if err != nil {
			if errors.Is(err, storage.ErrHashMismatch) {
				code := protocol.CodeInvalid
				if patched {
					code = protocol.CodeFailedPrecondition // the patch base differed: resend whole blocks
				}
				err = protocol.Errorf(code, "cycle %d batch %d: %v", b.Cycle, b.Seq, err)
			} else {
				err = fmt.Errorf("store batch: %w", err)
			}
			g.answered(c, rep, err, nil)
			return
		}
		c.mu.Lock()
		for i := range b.Blocks {
			delete(c.outstanding, blockKey{b.Blocks[i].Disk, b.Blocks[i].Block})
		}
		c.mu.Unlock()
		g.onStored(c.machine, int64(bytes))
		rep.send(data.FrameAck, ack)
	})
}

// chunk is a whole block as the repository stores it: in the codec it
// travelled in (Validate refused any other), except an S2 block for an
// encrypted repository, which is stored as plaintext the repository
// compresses with zstd. A sealed chunk is restored to an agent holding
// the key exactly as stored, and sealed blocks carry none or zstd only
// (docs/protocol.md §6.3), so an encrypted repository holds no S2 chunk.
func (g *Ingest) chunk(blk *data.Block) (*storage.Chunk, error) {
	ch := &storage.Chunk{Hash: storage.Hash(blk.Hash), Codec: storage.CodecNone, Data: blk.Data, PlainLen: int(blk.PlainLen)}
	switch blk.Codec {
	case data.CodecZstd:
		ch.Codec = storage.CodecZstd
	case data.CodecS2:
		ch.Codec = storage.CodecS2
		if g.repo.Encrypted() {
			plain, err := data.DecompressS2(nil, blk.Data, int(blk.PlainLen))
			if err != nil {
				return nil, err
			}
			ch.Codec, ch.Data = storage.CodecNone, plain
		}
	}
	return ch, nil
}

// untilDone yields the decoded frames until the channel closes or ctx
// ends: a stream refused from a commit callback (replies.fail cancels ctx)
// ends now, not when the agent sends its next frame or closes the stream.
func untilDone(ctx context.Context, frames <-chan decoded) iter.Seq[decoded] {
	return func(yield func(decoded) bool) {
		for {
			select {
			case d, ok := <-frames:
				if !ok || !yield(d) {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}
}

// blocksOf is the number of blocks of a disk (at least one).
func blocksOf(d storage.DiskSpec) int64 {
	return max((d.Size+int64(d.BlockSize)-1)/int64(d.BlockSize), 1)
}
