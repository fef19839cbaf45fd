package ship

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ferrydr/ferry/agent/blockmap"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/klauspost/compress/s2"
)

// arenaSize is the largest encode arena of a stream: a batch
// (batchMaxBytes) and the worst case of its last block.
const arenaSize = batchMaxBytes + 2*data.MaxBlockSize

// ack is what an acknowledgement makes durable: map entries to record.
type ack struct {
	m *blockmap.Map
	e blockmap.Entry
}

type sent struct {
	num   uint32
	items []*item
}

// conn is one data stream and its bookkeeping.
type conn struct {
	r        *run
	st       io.ReadWriteCloser
	fw       *frame.Writer
	needs    chan *data.Need
	readErr  chan error
	mu       sync.Mutex
	inflight map[uint32][]ack
	acked    chan struct{} // signalled on every ack
	batchSeq uint32
	codec    *chooser
	batch    measure // of the batch being assembled
	// arena holds the encoded blocks of the batch being assembled, which
	// are dead once sendBatch has copied them into the frame: one buffer
	// for the stream's life instead of a fresh (and zeroed) one a block.
	arena []byte
}

// stream sends parts on one data stream until parts is closed, then waits
// for every batch to be acknowledged.
func (r *run) stream(parts <-chan *part) error {
	var first *part
	select {
	case p, ok := <-parts:
		if !ok {
			return nil
		}
		first = p
	case <-r.ctx.Done():
		return nil
	}
	st, err := r.cfg.Open(r.ctx)
	if err != nil {
		for _, it := range first.items {
			r.release(it)
		}
		return fmt.Errorf("open data stream: %w", err)
	}
	c := &conn{
		r: r, st: st,
		fw:       frame.NewWriter(&countingWriter{w: st, n: &r.wire}),
		needs:    make(chan *data.Need, needWindow+1),
		readErr:  make(chan error, 1),
		inflight: map[uint32][]ack{},
		acked:    make(chan struct{}, 1),
		codec:    newChooser(r.cfg.Codec, r.cfg.S2, r.cfg.Log),
	}
	defer r.streamEnded(c.codec)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-r.ctx.Done():
			st.Close() // unblocks the reader and writers
		case <-stop:
		}
	}()
	go c.read()
	defer st.Close()

	var window []sent
	open := true
	release := func() {
		for _, s := range window {
			for _, it := range s.items {
				r.release(it)
			}
		}
	}
	if err := c.sendManifest(first, &window); err != nil {
		release()
		return err
	}
	for {
		for open && len(window) < needWindow {
			var p *part
			var ok bool
			if len(window) == 0 {
				select {
				case p, ok = <-parts:
				case <-r.ctx.Done():
					release()
					return nil
				}
			} else {
				select {
				case p, ok = <-parts:
				default:
					ok, p = true, nil
				}
			}
			if !ok {
				open = false
				break
			}
			if p == nil {
				break
			}
			if err := c.sendManifest(p, &window); err != nil {
				release()
				return err
			}
		}
		if len(window) == 0 {
			break
		}
		var n *data.Need
		select {
		case n = <-c.needs:
		case err := <-c.readErr:
			release()
			return err
		case <-r.ctx.Done():
			release()
			return nil
		}
		head := window[0]
		window = window[1:]
		if err := c.answer(head, n); err != nil {
			for _, it := range head.items {
				r.release(it)
			}
			release()
			return err
		}
	}
	// Everything is sent: wait until it is durable.
	for {
		c.mu.Lock()
		left := len(c.inflight)
		c.mu.Unlock()
		if left == 0 {
			return nil
		}
		select {
		case <-c.acked:
		case err := <-c.readErr:
			return err
		case <-r.ctx.Done():
			return nil
		}
	}
}

func (c *conn) sendManifest(p *part, window *[]sent) error {
	num := c.r.partSeq.Add(1) - 1
	m := data.Manifest{Cycle: c.r.cfg.Cycle, Part: num, Entries: make([]data.Entry, len(p.items))}
	for i, it := range p.items {
		e := data.Entry{Disk: it.disk.Index, Block: uint64(it.block), Hash: it.hash}
		if it.zero {
			e.Flags, e.Hash = data.FlagZero, data.Hash{}
		}
		m.Entries[i] = e
	}
	c.r.entries.Add(int64(len(p.items)))
	*window = append(*window, sent{num: num, items: p.items})
	if err := c.fw.WriteAppend(data.FrameManifest, m.Append); err != nil {
		return fmt.Errorf("send manifest: %w", err)
	}
	return c.fw.Flush()
}

// answer handles the controller's Need for a part: entries it does not need
// are durable already; the others travel in batches.
func (c *conn) answer(s sent, n *data.Need) error {
	if n.Part != s.num || len(n.Need) != len(s.items) {
		return fmt.Errorf("%w: need for part %d (%d entries) answers part %d (%d entries)", protocol.ErrInvalid, n.Part, len(n.Need), s.num, len(s.items))
	}
	var now []ack
	batch := data.Batch{Cycle: c.r.cfg.Cycle}
	var acks []ack
	bytes := 0
	flush := func() error {
		if len(batch.Blocks) == 0 {
			return nil
		}
		err := c.sendBatch(&batch, acks, bytes)
		batch.Blocks, acks, bytes = nil, nil, 0
		c.arena = c.arena[:0]
		return err
	}
	for i, it := range s.items {
		switch {
		case it.zero:
			c.r.zero.Add(1)
			now = append(now, ack{it.disk.Map, blockmap.Entry{Block: it.block, Hash: blockmap.ZeroHash}})
		case !n.Need[i]:
			c.r.deduped.Add(1)
			now = append(now, ack{it.disk.Map, blockmap.Entry{Block: it.block, Hash: it.mapHash}})
			c.r.release(it)
		default:
			b := c.encode(it)
			c.r.release(it)
			batch.Blocks = append(batch.Blocks, b)
			acks = append(acks, ack{it.disk.Map, blockmap.Entry{Block: it.block, Hash: it.mapHash}})
			bytes += len(b.Data)
			if bytes >= batchMaxBytes || len(batch.Blocks) >= data.MaxEntriesPerFrame {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	if err := record(now); err != nil {
		return err
	}
	return flush()
}

// encode compresses a block, or the changed runs of it.
func (c *conn) encode(it *item) data.Block {
	b := data.Block{Disk: it.disk.Index, Block: uint64(it.block), Hash: it.hash}
	var src []byte
	if it.patch != nil {
		src = it.patch
		b.Flags = data.FlagPatch
		c.r.patches.Add(1)
	} else {
		src = (*it.buf)[:it.disk.BlockSize]
	}
	b.PlainLen = uint32(len(src))
	// Room in the arena for the worst case: Compress then writes there.
	// A full arena is replaced, not grown in place: the batch's earlier
	// blocks still point into the old one. Each replacement doubles, up
	// to a batch, so a cycle of a few patches allocates little.
	room := s2.MaxEncodedLen(len(src))
	if cap(c.arena)-len(c.arena) < room {
		c.arena = make([]byte, 0, max(room, min(2*cap(c.arena), arenaSize)))
	}
	dst := c.arena[len(c.arena):len(c.arena):cap(c.arena)]
	start := c.r.now()
	b.Codec, b.Data = c.r.cfg.Compressor.Compress(c.codec.codec, dst, src)
	c.batch.compress += c.r.now().Sub(start)
	c.batch.plain += int64(len(src))
	if b.Codec == data.CodecNone {
		b.Data = append(dst, src...) // a block's buffer is pooled
	}
	c.arena = c.arena[:len(c.arena)+len(b.Data)]
	c.r.codecBytes[b.Codec].Add(int64(len(b.Data)))
	c.r.sent.Add(1)
	return b
}

func (c *conn) sendBatch(b *data.Batch, acks []ack, bytes int) error {
	c.batchSeq++
	b.Seq = c.batchSeq
	c.mu.Lock()
	c.inflight[b.Seq] = acks
	c.mu.Unlock()
	start := c.r.now()
	if l := c.r.cfg.Limiter; l != nil {
		for left := bytes; left > 0; {
			n := min(left, l.Burst())
			if err := l.WaitN(c.r.ctx, n); err != nil {
				return err
			}
			left -= n
		}
	}
	if err := c.fw.WriteAppend(data.FrameBatch, b.Append); err != nil {
		return fmt.Errorf("send batch: %w", err)
	}
	if err := c.fw.Flush(); err != nil {
		return err
	}
	c.batch.send = c.r.now().Sub(start)
	c.codec.observe(c.batch)
	c.batch = measure{}
	return nil
}

// read demultiplexes the controller's replies.
func (c *conn) read() {
	fr := frame.NewReader(c.st, data.MaxFrameSize)
	fail := func(err error) {
		select {
		case c.readErr <- err:
		default:
		}
	}
	for {
		typ, payload, err := fr.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: controller closed the data stream", protocol.ErrUnavailable)
			}
			fail(err)
			return
		}
		switch typ {
		case data.FrameNeed:
			n := &data.Need{}
			if err := n.Decode(payload); err != nil {
				fail(err)
				return
			}
			c.needs <- n
		case data.FrameAck:
			var a data.Ack
			if err := a.Decode(payload); err != nil {
				fail(err)
				return
			}
			c.mu.Lock()
			acks, ok := c.inflight[a.Seq]
			delete(c.inflight, a.Seq)
			c.mu.Unlock()
			if !ok {
				fail(fmt.Errorf("%w: ack for unknown batch %d", protocol.ErrInvalid, a.Seq))
				return
			}
			if err := record(acks); err != nil {
				fail(err)
				return
			}
			select {
			case c.acked <- struct{}{}:
			default:
			}
		case data.FrameError:
			var e data.Error
			if err := e.Decode(payload); err != nil {
				fail(err)
				return
			}
			fail(&protocol.Error{Code: e.Code, Message: e.Message})
			return
		default:
			fail(fmt.Errorf("%w: unexpected frame type %d on a data stream", protocol.ErrInvalid, typ))
			return
		}
	}
}

// record writes acknowledged entries into their maps.
func record(acks []ack) error {
	for _, a := range acks {
		if err := a.m.Set(a.e); err != nil {
			return err
		}
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n interface{ Add(int64) int64 }
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}
