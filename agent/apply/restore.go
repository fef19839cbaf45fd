package apply

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/agent/repokey"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
)

// RestoreResult is what a restore stream did.
type RestoreResult struct {
	Ref        msg.TargetRef
	From, To   int64
	Created    bool   // the set was made by this stream
	Batches    uint32 // batches applied
	Blocks     int64  // blocks written
	ZeroBlocks int64  // blocks zeroed
	Bytes      int64  // bytes applied (written and zeroed)
}

// DecodeRestoreHeader parses and checks a restore stream's header payload
// (JSON msg.RestoreHeader): the target directory absolute, the machine and
// set names valid, points To > 0 and From ≥ 0, the disks valid.
func DecodeRestoreHeader(payload []byte) (msg.RestoreHeader, error) {
	var h msg.RestoreHeader
	if err := json.Unmarshal(payload, &h); err != nil {
		return h, invalidf("restore header: %v", err)
	}
	if _, err := SetDir(h.Ref.Dir, h.Ref.Machine, h.Ref.Set); err != nil {
		return h, fmt.Errorf("restore header: %w", err)
	}
	if h.To <= 0 || h.From < 0 {
		return h, invalidf("restore header: a move from point %d to %d (want from ≥ 0, to > 0)", h.From, h.To)
	}
	if err := ValidateDisks(h.Disks); err != nil {
		return h, fmt.Errorf("restore header: %w", err)
	}
	return h, nil
}

// CheckMove decides whether a set in state st may be moved as h asks:
// with Force always; otherwise the set must not have been written by a
// machine, and must hold From (the blocks are what differs from From to
// To), or hold To already (the blocks change nothing; a retry after a lost
// ack), or be a move from From to To that was interrupted (a resume: the
// blocks are absolute content). Anything else is ErrRefused, saying what
// the set holds.
func CheckMove(st msg.DiskSetState, h msg.RestoreHeader) error {
	if h.Force {
		return nil
	}
	ok := !st.Written && (st.MovingTo == 0 && (st.Point == h.From || st.Point == h.To) ||
		st.MovingTo == h.To && st.Point == h.From)
	if ok {
		return nil
	}
	return fmt.Errorf("%w: a move of %s of machine %s from point %d to %d: %s (force sends every block that may differ)",
		ErrRefused, h.Ref.Set, h.Ref.Machine, h.From, h.To, describe(h.Ref.Set, st))
}

// ServeRestore applies one restore stream (protocol/msg target.go) read
// from and answered on rw: the header, then batches of blocks at point To
// — each block's BLAKE3 checked before it is written, zero blocks punched —
// until the barrier; then the set is finished (truncated, fsynced, state
// Point=To) and data.Ack{Cycle: To, Seq: batches} sent. Any failure is
// answered with an error frame carrying its protocol code, and the set
// stays marked as moving: nothing is recorded as done.
//
// rw should be a net.Conn (a session stream): when ctx ends or a block
// fails, its deadline wakes the frame reader. The caller closes rw.
func (s *Site) ServeRestore(ctx context.Context, rw io.ReadWriter) (RestoreResult, error) {
	dl, _ := rw.(deadliner)
	if dl != nil {
		stop := context.AfterFunc(ctx, func() { _ = dl.SetDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	rs := &restoreStream{fr: frame.NewPooledReader(rw, data.MaxFrameSize), fw: frame.NewWriter(rw), dl: dl}
	// restore returns once its frame reader goroutine has ended, and no
	// payload outlives it (batches are copied into their own buffers).
	defer rs.fr.Release()
	var res RestoreResult
	err := s.restore(ctx, rs, &res)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		rs.fail(err)
		s.log.Warn("restore failed", "machine", res.Ref.Machine, "set", res.Ref.Set, "from", res.From, "to", res.To,
			"batches", res.Batches, "bytes", res.Bytes, "err", err)
		return res, err
	}
	s.log.Info("restore done", "machine", res.Ref.Machine, "set", res.Ref.Set, "from", res.From, "to", res.To,
		"created", res.Created, "blocks", res.Blocks, "zero_blocks", res.ZeroBlocks, "bytes", res.Bytes)
	return res, nil
}

// deadliner is the part of net.Conn that wakes blocked reads.
type deadliner interface {
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
}

// restoreStream is one restore stream's frames, and its error reply, sent
// at most once.
type restoreStream struct {
	fr     *frame.Reader
	fw     *frame.Writer
	dl     deadliner // nil when the stream has no deadlines
	failed bool
}

// fail answers err with an error frame, once.
func (rs *restoreStream) fail(err error) {
	if rs.failed {
		return
	}
	rs.failed = true
	_ = rs.fw.WriteError(err)
}

func (s *Site) restore(ctx context.Context, rs *restoreStream, res *RestoreResult) error {
	typ, payload, err := rs.fr.Next()
	if err != nil {
		return fmt.Errorf("restore: read header: %w", readErr(err))
	}
	if typ != msg.FrameRestoreHeader {
		return invalidf("restore: first frame of type %d, want the header (%d)", typ, msg.FrameRestoreHeader)
	}
	h, err := DecodeRestoreHeader(payload)
	if err != nil {
		return err
	}
	res.Ref, res.From, res.To = h.Ref, h.From, h.To
	// A sealed stream needs the repository's key: refused before anything
	// is locked, created or marked moving.
	opener, err := s.opener(h)
	if err != nil {
		return fmt.Errorf("restore of %s of machine %s: %w", h.Ref.Set, h.Ref.Machine, err)
	}
	setDir, _ := SetDir(h.Ref.Dir, h.Ref.Machine, h.Ref.Set) // checked by DecodeRestoreHeader
	_, unlock, err := s.lockMachine(ctx, h.Ref.Dir, h.Ref.Machine, fmt.Sprintf("a restore of %s to point %d", h.Ref.Set, h.To))
	if err != nil {
		return err
	}
	defer unlock()

	set, done, err := s.openSet(setDir)
	if errors.Is(err, ErrNotFound) && h.Create {
		set, err = CreateDiskSet(setDir, h.Disks, s.setOptions())
		res.Created = err == nil
		done = func() { set.Close() }
	}
	if err != nil {
		return fmt.Errorf("restore of %s of machine %s: %w", h.Ref.Set, h.Ref.Machine, err)
	}
	defer done()
	if err := CheckMove(set.State(), h); err != nil {
		return err
	}
	if err := set.BeginMove(h.To, h.Disks); err != nil {
		return err
	}
	n, err := s.applyMove(ctx, rs, set, h, opener, res)
	if err != nil {
		return err
	}
	ack := data.Ack{Cycle: uint64(h.To), Seq: n}
	if err := rs.fw.WriteAppend(data.FrameAck, ack.Append); err != nil {
		return fmt.Errorf("restore: write ack: %w", err)
	}
	if err := rs.fw.Flush(); err != nil {
		return fmt.Errorf("restore: write ack: %w", err)
	}
	return nil
}

// applyMove writes the stream's blocks and finishes the move. A home set
// whose move fails is rolled back at once from its undo log: the home
// disks never stay between two points.
func (s *Site) applyMove(ctx context.Context, rs *restoreStream, set *DiskSet, h msg.RestoreHeader, opener *repokey.Opener, res *RestoreResult) (uint32, error) {
	n, err := func() (uint32, error) {
		if h.Reset {
			if err := set.Reset(); err != nil {
				return 0, err
			}
		}
		n, err := s.applyStream(ctx, rs, set, h, opener, res)
		if err != nil {
			return n, err
		}
		return n, set.Finish(h.To)
	}()
	if err != nil {
		if aerr := set.AbortMove(); aerr != nil {
			s.log.Error("the failed move could not be rolled back now; the next open of the set does", "set", set.Dir(), "err", aerr)
		}
	}
	return n, err
}

// opener returns what opens a sealed stream's blocks (nil for plaintext):
// the key this agent holds, which must be the repository's.
func (s *Site) opener(h msg.RestoreHeader) (*repokey.Opener, error) {
	if h.Sealed == nil {
		return nil, nil
	}
	id, err := hex.DecodeString(h.Sealed.RepoID)
	if err != nil || len(id) != 16 {
		return nil, invalidf("restore header: repository id %q (want 32 hex digits)", h.Sealed.RepoID)
	}
	if s.cfg.RepositoryKey == nil {
		return nil, repokey.ErrNoKey
	}
	k, err := s.cfg.RepositoryKey()
	if err == nil && k == nil {
		err = repokey.ErrNoKey
	}
	if err != nil {
		return nil, err
	}
	return k.NewOpener([16]byte(id), h.Sealed.KeyFingerprint)
}

// readErr turns a truncated stream into an error that says so.
func readErr(err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("the stream ended before the barrier: %w", io.ErrUnexpectedEOF)
	}
	return err
}

// batchBuf owns a batch's payload: the frame reader reuses its own.
type batchBuf struct {
	payload []byte
	batch   data.Batch
}

// streamItem is what the reader hands the applier: a batch, the barrier,
// or the reason the stream cannot go on.
type streamItem struct {
	buf     *batchBuf
	barrier bool
	err     error
}

// applyStream applies batches until the barrier and returns their number.
// One goroutine reads and decodes frames while the batch before is being
// verified and written, so the network and the disk work at once; the
// blocks of a batch are shared among the workers.
func (s *Site) applyStream(ctx context.Context, rs *restoreStream, set *DiskSet, h msg.RestoreHeader, opener *repokey.Opener, res *RestoreResult) (n uint32, err error) {
	workers := s.cfg.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	dec, err := data.NewDecompressor(workers)
	if err != nil {
		return 0, err
	}
	defer dec.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Two buffers: the reader fills one while the applier works on the other.
	free := make(chan *batchBuf, 2)
	free <- &batchBuf{}
	free <- &batchBuf{}
	items := make(chan streamItem)
	var reader sync.WaitGroup
	reader.Go(func() { readBatches(ctx, rs.fr, uint64(h.To), free, items) })
	defer func() {
		if err != nil {
			// Tell the peer first, then stop the reader: a past read
			// deadline wakes it at once; without deadlines the peer's next
			// frame or its close after our error frame does.
			if ctx.Err() == nil {
				rs.fail(err)
			}
			cancel()
			if rs.dl != nil {
				_ = rs.dl.SetReadDeadline(time.Unix(1, 0))
			}
		}
		reader.Wait()
	}()

	ap := &applier{set: set, dec: dec, disks: h.Disks, workers: workers, scratch: make([][]byte, workers),
		opener: opener, sealed: make([][]byte, workers)}
	for it := range items {
		switch {
		case it.err != nil:
			return n, it.err
		case it.barrier:
			return n, nil
		}
		err := ap.apply(it.buf.batch.Blocks)
		res.Blocks, res.ZeroBlocks, res.Bytes = ap.blocks.Load(), ap.zeros.Load(), set.BytesApplied()
		if err != nil {
			return n, fmt.Errorf("restore of %s of machine %s, batch %d: %w", h.Ref.Set, h.Ref.Machine, it.buf.batch.Seq, err)
		}
		n++
		res.Batches = n
		if n == 1 && set.home() && s.cfg.Pause != nil {
			s.cfg.Pause(PauseHomeMove)
		}
		free <- it.buf
	}
	return n, fmt.Errorf("restore: %w", context.Cause(ctx))
}

// readBatches reads frames until the barrier, checking each batch's cycle
// and sequence and the barrier's count, and hands them on in order.
func readBatches(ctx context.Context, fr *frame.Reader, cycle uint64, free chan *batchBuf, items chan<- streamItem) {
	defer close(items)
	send := func(it streamItem) bool {
		select {
		case items <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for seq := uint32(0); ctx.Err() == nil; seq++ {
		typ, p, err := fr.Next()
		if err != nil {
			send(streamItem{err: fmt.Errorf("restore: read batch %d: %w", seq, readErr(err))})
			return
		}
		switch typ {
		case data.FrameBatch:
			var bb *batchBuf
			select {
			case bb = <-free:
			case <-ctx.Done():
				return
			}
			bb.payload = append(bb.payload[:0], p...)
			if err := bb.batch.Decode(bb.payload); err != nil {
				send(streamItem{err: fmt.Errorf("restore: batch %d: %w", seq, err)})
				return
			}
			if bb.batch.Cycle != cycle || bb.batch.Seq != seq {
				send(streamItem{err: invalidf("restore: batch %d of cycle %d where batch %d of cycle %d was due", bb.batch.Seq, bb.batch.Cycle, seq, cycle)})
				return
			}
			if !send(streamItem{buf: bb}) {
				return
			}
		case data.FrameBarrier:
			var b data.Barrier
			if err := b.Decode(p); err != nil {
				send(streamItem{err: fmt.Errorf("restore: barrier: %w", err)})
				return
			}
			if b.Cycle != cycle || b.Seq != seq {
				send(streamItem{err: invalidf("restore: barrier {cycle %d, seq %d} after %d batches of cycle %d", b.Cycle, b.Seq, seq, cycle)})
				return
			}
			send(streamItem{barrier: true})
			return
		default:
			send(streamItem{err: invalidf("restore: frame of type %d where a batch or the barrier was due", typ)})
			return
		}
	}
}

// applier verifies and writes the blocks of batches.
type applier struct {
	set     *DiskSet
	dec     *data.Decompressor
	disks   []msg.TargetDisk
	workers int
	scratch [][]byte // a decompression buffer per worker
	opener  *repokey.Opener
	sealed  [][]byte // a decryption buffer per worker
	blocks  atomic.Int64
	zeros   atomic.Int64
}

// apply applies blocks, split in contiguous shares among the workers (so
// each writes runs of neighbouring blocks). The first error stops them all.
func (a *applier) apply(blocks []data.Block) error {
	// Home disks: what the batch overwrites is in the undo log, durably,
	// before any of it is written.
	if err := a.set.Protect(blocks); err != nil {
		return err
	}
	w := min(a.workers, len(blocks))
	if w <= 1 {
		return a.share(0, blocks, nil)
	}
	var (
		wg     sync.WaitGroup
		once   sync.Once
		first  error
		failed atomic.Bool
	)
	per := (len(blocks) + w - 1) / w
	for i := 0; i < w && i*per < len(blocks); i++ {
		share := blocks[i*per : min((i+1)*per, len(blocks))]
		wg.Go(func() {
			if err := a.share(i, share, &failed); err != nil {
				once.Do(func() { first = err })
				failed.Store(true)
			}
		})
	}
	wg.Wait()
	return first
}

func (a *applier) share(worker int, blocks []data.Block, failed *atomic.Bool) error {
	for i := range blocks {
		if failed != nil && failed.Load() {
			return nil
		}
		if err := a.block(worker, &blocks[i]); err != nil {
			return err
		}
	}
	return nil
}

// block verifies and applies one block. Bytes are written only once their
// hash matched.
func (a *applier) block(worker int, b *data.Block) error {
	if int(b.Disk) >= len(a.disks) {
		return invalidf("block %d of disk index %d: the header has %d disks", b.Block, b.Disk, len(a.disks))
	}
	dk := a.disks[b.Disk]
	if b.Flags&data.FlagPatch != 0 {
		return invalidf("disk %s block %d: a patch (restore streams carry whole blocks)", dk.Name, b.Block)
	}
	if b.Flags&data.FlagZero != 0 {
		if err := a.set.zero(int(b.Disk), b.Block, int(b.PlainLen)); err != nil {
			return err
		}
		a.zeros.Add(1)
		return nil
	}
	if bs := uint64(dk.BlockSize); b.PlainLen != uint32(bs) && b.Block <= uint64(dk.Size-1)/bs && int64(b.PlainLen) != dk.Size-int64(b.Block*bs) {
		return invalidf("disk %s block %d: %d bytes, want %d", dk.Name, b.Block, b.PlainLen, bs)
	}
	enc := b
	if b.Flags&data.FlagSealed != 0 {
		if a.opener == nil {
			return invalidf("disk %s block %d: a sealed block on a stream whose header names no repository key", dk.Name, b.Block)
		}
		opened, err := a.opener.Open(a.sealed[worker][:0], b.Data, b.Hash, b.Codec, b.PlainLen)
		if err != nil {
			return fmt.Errorf("disk %s block %d (not written): %w", dk.Name, b.Block, err)
		}
		a.sealed[worker] = opened
		enc = &data.Block{Codec: b.Codec, PlainLen: b.PlainLen, Data: opened}
	}
	plain, err := a.dec.Plain(a.scratch[worker], enc)
	if err != nil {
		return fmt.Errorf("disk %s block %d: %w", dk.Name, b.Block, err)
	}
	if b.Codec != data.CodecNone {
		a.scratch[worker] = plain[:0] // keep the grown buffer
	}
	if data.Hash(blake3.Sum256(plain)) != b.Hash {
		return fmt.Errorf("%w: disk %s block %d (not written)", ErrHashMismatch, dk.Name, b.Block)
	}
	if err := a.set.WriteBlock(int(b.Disk), b.Block, plain); err != nil {
		return fmt.Errorf("disk %s block %d: %w", dk.Name, b.Block, err)
	}
	a.blocks.Add(1)
	return nil
}
