package failover

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/session"
	"github.com/ferrydr/ferry/storage"
)

// batchBytes bounds the data of one restore batch. The agent applies a
// batch while the next travels, so smaller batches overlap more of a move:
// at 1 MiB a 9 MB move of 64 KiB blocks took 57–78 ms where it took 80–91
// ms at 8 MiB (bench plan-rto's single failovers; its plan members 0.25 s
// against 0.29–0.34 s).
const batchBytes = 1 << 20

// moveBlock is one block a move writes, with its content at the point.
type moveBlock struct {
	disk  uint16
	block int64
	hash  storage.Hash
	zero  bool
}

// Move says how to bring a disk set to a point.
type Move struct {
	AgentID string
	Ref     msg.TargetRef
	Machine string
	// SetPoint is the point the set's state says it holds. From is the
	// point the diff starts from: normally SetPoint; 0 when the set's
	// content is unknown (the machine wrote to it) — every block ever
	// written is then sent; another point whose content the set is known to
	// hold. MovingTo is an interrupted earlier move's destination: its
	// blocks are rewritten too.
	SetPoint, From, MovingTo, To int64
	Create                       bool
	// Force moves a set its state marks Written whose raw files still hold
	// SetPoint (the machine wrote to format copies).
	Force    bool
	JobID    string // whose key reads an encrypted repository ("" for staging)
	Progress func(done, total int64)
}

// MoveResult says what a move sent.
type MoveResult struct {
	Blocks, ZeroBlocks, Bytes int64
}

// move brings a disk set to point To, rewriting only the blocks whose
// content differs between From (and MovingTo) and To.
func (e *Engine) move(ctx context.Context, mv Move) (MoveResult, error) {
	repo, sealed, err := e.moveReader(ctx, mv)
	if err != nil {
		return MoveResult{}, err
	}
	to, err := e.Repo.Point(ctx, mv.To)
	if err != nil {
		return MoveResult{}, fmt.Errorf("point %d: %w", mv.To, err)
	}
	from := mv.From
	if from != 0 {
		if _, err := e.Repo.Point(ctx, from); err != nil {
			// The set's point was pruned by retention: send every block.
			e.Log.Info("the staged point is gone; rewriting every written block", "machine", mv.Machine, "point", from)
			from = 0
		}
	}
	moving := mv.MovingTo
	if moving != 0 && moving != mv.To {
		if _, err := e.Repo.Point(ctx, moving); err != nil {
			from, moving = 0, 0 // cannot know what the interrupted move wrote
		}
	}
	disks := make([]msg.TargetDisk, len(to.Disks))
	for i, d := range to.Disks {
		disks[i] = msg.TargetDisk{Name: d.Name, Size: d.Size, BlockSize: d.BlockSize}
	}
	blocks, err := e.diffBlocks(ctx, mv, to, from, moving)
	prunedMeanwhile := e.pruned(ctx, from) || e.pruned(ctx, moving)
	if err != nil && !prunedMeanwhile {
		return MoveResult{}, err
	}
	if prunedMeanwhile {
		// Retention pruned From (or MovingTo) after it was looked up:
		// the diff failed not finding it, or rows read after the prune
		// lost blocks (one zero at To and data at From reads zero at
		// both). Diff again from nothing.
		e.Log.Info("the set's point was pruned during the diff; rewriting every written block", "machine", mv.Machine, "point", from)
		from, moving = 0, 0
		if blocks, err = e.diffBlocks(ctx, mv, to, 0, 0); err != nil {
			return MoveResult{}, err
		}
	}
	sort.Slice(blocks, func(i, j int) bool {
		if blocks[i].disk != blocks[j].disk {
			return blocks[i].disk < blocks[j].disk
		}
		return blocks[i].block < blocks[j].block
	})
	var res MoveResult
	var total int64
	for _, b := range blocks {
		if !b.zero {
			total += int64(to.Disks[b.disk].BlockSize)
		}
	}
	st, err := e.Agents.Open(ctx, mv.AgentID, protocol.KindRestore)
	if err != nil {
		return res, err
	}
	defer st.Close()
	hdr, _ := json.Marshal(msg.RestoreHeader{Ref: mv.Ref, From: mv.SetPoint, To: mv.To, Disks: disks,
		Create: mv.Create, Force: mv.Force || mv.MovingTo != 0 || from != mv.SetPoint,
		// From nothing, the diff names only To's non-zero blocks: whatever
		// else an existing set holds must go first.
		Reset: from == 0 && !mv.Create, Sealed: sealed})
	fw := frame.NewWriter(st)
	if err := fw.Write(msg.FrameRestoreHeader, hdr); err != nil {
		return res, err
	}
	// The agent answers an error frame if it refuses; read it in the
	// background so a refusal ends the move at once.
	// An agent that refuses mid-stream stops reading: a write blocked on
	// the full stream window is woken (past write deadline) once the
	// refusal is in replies, and the move returns the refusal.
	replies := make(chan error, 1)
	go func() {
		err := readAck(st, uint64(mv.To))
		replies <- err
		if err != nil {
			_ = st.SetWriteDeadline(time.Unix(1, 0))
		}
	}()
	refused := func(werr error) error {
		select {
		case err := <-replies:
			if err != nil {
				return agentRefused(err)
			}
		default:
		}
		return werr
	}

	batch := data.Batch{Cycle: uint64(mv.To)}
	size := 0
	var seq uint32
	flush := func() error {
		if len(batch.Blocks) == 0 {
			return nil
		}
		batch.Seq = seq // batches count from 0; the barrier says how many
		seq++
		if err := fw.WriteAppend(data.FrameBatch, batch.Append); err != nil {
			return refused(err)
		}
		if err := fw.Flush(); err != nil {
			return refused(err)
		}
		batch.Blocks, size = batch.Blocks[:0], 0
		if mv.Progress != nil {
			mv.Progress(res.Bytes, total)
		}
		if seq == 1 && e.Failpoint != nil {
			e.Failpoint(FailMoveMid)
		}
		return nil
	}
	readCtx, stopReads := context.WithCancel(ctx)
	contents, readsDone := e.prefetch(readCtx, repo, readMode{sealed: sealed != nil, s2: restoreTakesS2(st)}, blocks)
	defer func() {
		stopReads()
		readsDone() // no read of the repository outlives the move
	}()
	for _, b := range blocks {
		select {
		case err := <-replies:
			return res, agentRefused(err)
		default:
		}
		bs := to.Disks[b.disk].BlockSize
		blk := data.Block{Disk: b.disk, Block: uint64(b.block), Hash: data.Hash(b.hash)}
		if b.zero {
			blk.Flags, blk.PlainLen = data.FlagZero, uint32(bs)
			res.ZeroBlocks++
		} else {
			var f fetched
			select {
			case out := <-contents:
				select {
				case f = <-out:
				case <-ctx.Done(): // the job may never have reached a reader
					return res, ctx.Err()
				}
			case <-ctx.Done():
				return res, ctx.Err()
			}
			if f.err != nil {
				return res, fmt.Errorf("read block %d of disk %s: %w", b.block, to.Disks[b.disk].Name, f.err)
			}
			blk.Flags, blk.Codec, blk.PlainLen, blk.Data = f.blk.Flags, f.blk.Codec, f.blk.PlainLen, f.blk.Data
			res.Blocks++
			res.Bytes += int64(bs)
			size += len(blk.Data)
		}
		batch.Blocks = append(batch.Blocks, blk)
		if size >= batchBytes || len(batch.Blocks) >= data.MaxEntriesPerFrame {
			if err := flush(); err != nil {
				return res, err
			}
		}
	}
	if err := flush(); err != nil {
		return res, err
	}
	if err := fw.WriteAppend(data.FrameBarrier, (&data.Barrier{Cycle: uint64(mv.To), Seq: seq}).Append); err != nil {
		return res, refused(err)
	}
	if err := fw.Flush(); err != nil {
		return res, refused(err)
	}
	select {
	case err := <-replies:
		if err != nil {
			return res, agentRefused(err)
		}
	case <-ctx.Done():
		return res, ctx.Err()
	}
	if mv.Progress != nil {
		mv.Progress(total, total)
	}
	return res, nil
}

// diffBlocks lists the blocks a move from (and an interrupted move to
// moving) to point to writes, with their content at to.
func (e *Engine) diffBlocks(ctx context.Context, mv Move, to storage.Point, from, moving int64) ([]moveBlock, error) {
	var blocks []moveBlock
	for i, d := range to.Disks {
		seen := map[int64]bool{}
		err := e.Repo.Diff(ctx, mv.Machine, d.Name, from, mv.To, func(b int64, h storage.Hash, zero bool) error {
			seen[b] = true
			blocks = append(blocks, moveBlock{disk: uint16(i), block: b, hash: h, zero: zero})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("diff of disk %s: %w", d.Name, err)
		}
		if moving != 0 && moving != mv.To && from != 0 {
			// Blocks the interrupted move may have written: rewrite them
			// with their content at To.
			dr, err := e.Repo.OpenDisk(ctx, mv.To, d.Name)
			if err != nil {
				return nil, err
			}
			err = e.Repo.Diff(ctx, mv.Machine, d.Name, from, moving, func(b int64, _ storage.Hash, _ bool) error {
				if seen[b] || b*int64(d.BlockSize) >= d.Size {
					return nil
				}
				h, zero, err := dr.BlockHash(ctx, b)
				if err != nil {
					return err
				}
				blocks = append(blocks, moveBlock{disk: uint16(i), block: b, hash: h, zero: zero})
				return nil
			})
			if err != nil {
				return nil, err
			}
		}
	}
	return blocks, nil
}

// pruned reports whether point id (0: none) is gone from the repository.
func (e *Engine) pruned(ctx context.Context, id int64) bool {
	if id == 0 {
		return false
	}
	_, err := e.Repo.Point(ctx, id)
	return errors.Is(err, storage.ErrNotFound)
}

// FailMoveMid is the failpoint after a move's first batch was sent, before
// its barrier: the set at the target is part-way between two points.
const FailMoveMid = "move.mid"

// Reads of block contents in flight ahead of the sender: the index lookup
// and pack read of one block overlap with the others' and with sending.
const (
	prefetchReaders = 4
	prefetchWindow  = 64 // blocks read ahead (≤ 64 × the block size in memory)
)

// fetched is one block's content, or why it could not be read.
type fetched struct {
	blk data.Block
	err error
}

// prefetch reads the contents of the non-zero blocks, in order: each value
// of the returned channel is the next block's result channel. The chunks
// of each window of blocks are located in one index query (content reads
// then need none). It stops when ctx ends; the returned wait returns once
// its goroutines have.
func (e *Engine) prefetch(ctx context.Context, repo *storage.Repo, mode readMode, blocks []moveBlock) (<-chan chan fetched, func()) {
	var wg sync.WaitGroup
	order := make(chan chan fetched, prefetchWindow)
	type job struct {
		hash storage.Hash
		loc  *storage.ChunkLoc
		out  chan fetched
	}
	jobs := make(chan job)
	for range prefetchReaders {
		wg.Go(func() {
			for j := range jobs {
				var f fetched
				f.err = e.content(ctx, repo, mode, j.hash, j.loc, &f.blk)
				j.out <- f // buffered: never blocks
			}
		})
	}
	wg.Go(func() {
		defer close(jobs)
		var locs map[storage.Hash]storage.ChunkLoc
		located := 0 // blocks[:located] are located
		for i, b := range blocks {
			if b.zero {
				continue
			}
			if i >= located && e.locates(mode.sealed) {
				end := min(len(blocks), i+prefetchWindow)
				var hs []storage.Hash
				for _, w := range blocks[i:end] {
					if !w.zero {
						hs = append(hs, w.hash)
					}
				}
				// A failed lookup leaves each read to look its chunk up.
				locs, _ = e.Repo.Locate(ctx, hs)
				located = end
			}
			j := job{hash: b.hash, out: make(chan fetched, 1)}
			if loc, ok := locs[b.hash]; ok {
				j.loc = &loc
			}
			select {
			case order <- j.out: // blocks while the window is full
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				return
			}
		}
	})
	return order, wg.Wait
}

// locates reports whether content reads chunks as stored (then prefetch
// locates them ahead).
func (e *Engine) locates(sealed bool) bool { return !e.Repo.Encrypted() || sealed }

// readMode is how a move sends what it reads: sealed, the chunks of an
// encrypted repository as stored (the agent holds the key); s2, S2 chunks
// as stored (the agent decodes S2 on restore streams).
type readMode struct{ sealed, s2 bool }

// restoreTakesS2 reports whether the agent at the other end of a restore
// stream decodes S2 blocks: every build that speaks protocol v3 does
// (docs/protocol.md §6.3), older ones may not.
func restoreTakesS2(st *session.Stream) bool {
	return st.Session().Version() >= protocol.VersionRestoreS2
}

// content fills a block's data: the stored encoding as is for a plain
// repository (the agent decodes and checks the hash), an S2 chunk decoded
// unless mode.s2; for an encrypted one the chunk as stored with its sealed
// data key when the agent holds the repository key (mode.sealed; the
// agent decrypts), else the plaintext read with the job's key. loc, when
// known, saves the chunk's index lookup.
func (e *Engine) content(ctx context.Context, repo *storage.Repo, mode readMode, h storage.Hash, loc *storage.ChunkLoc, blk *data.Block) error {
	if e.locates(mode.sealed) {
		var env storage.Envelope
		var err error
		if loc != nil {
			env, err = e.Repo.EnvelopeAt(ctx, *loc)
		} else {
			env, err = e.Repo.ChunkEnvelope(ctx, h)
		}
		if err != nil {
			return err
		}
		blk.Codec, blk.PlainLen, blk.Data = data.CodecNone, uint32(env.PlainLen), env.Data
		switch env.Codec {
		case storage.CodecZstd:
			blk.Codec = data.CodecZstd
		case storage.CodecS2:
			// Sealed blocks cannot be re-encoded without the key; ingest
			// never stores S2 in an encrypted repository.
			if env.Key != nil {
				return fmt.Errorf("chunk %s: an S2 chunk in an encrypted repository cannot be sent sealed", h)
			}
			if mode.s2 {
				blk.Codec = data.CodecS2
				break
			}
			// An agent older than v3 gets the plaintext (none and zstd
			// are what every version decodes); S2 decodes at memory speed.
			plain, err := data.DecompressS2(nil, env.Data, env.PlainLen)
			if err != nil {
				return fmt.Errorf("chunk %s: %w", h, err)
			}
			blk.Data = plain
		}
		if env.Key != nil {
			blk.Flags |= data.FlagSealed
			blk.Data = append(env.Key.Record(), env.Data...)
		}
		return nil
	}
	b, err := repo.ReadChunk(ctx, h)
	if err != nil {
		return err
	}
	blk.Codec, blk.PlainLen, blk.Data = data.CodecNone, uint32(len(b)), b
	return nil
}

// readAck waits for the agent's Ack of a move (or its error frame).
func readAck(st io.Reader, to uint64) error {
	fr := frame.NewReader(st, 1<<16)
	typ, payload, err := fr.Next()
	if err != nil {
		return err
	}
	if typ != data.FrameAck {
		return fmt.Errorf("%w: unexpected frame %d on a restore stream", protocol.ErrInvalid, typ)
	}
	var a data.Ack
	if err := a.Decode(payload); err != nil {
		return err
	}
	if a.Cycle != to {
		return fmt.Errorf("%w: ack for point %d, moving to %d", protocol.ErrInvalid, a.Cycle, to)
	}
	return nil
}

// agentRefused keeps the agent's protocol error (its code says whether a
// retry can help).
func agentRefused(err error) error {
	if err == nil {
		return errors.New("the agent ended the restore stream early")
	}
	return fmt.Errorf("target agent: %w", err)
}

// moveReader decides how a move reads block contents. An unencrypted
// repository is read as stored. An encrypted one is sent as stored
// (sealed) when the target agent holds the repository key — the
// controller never needs the private key, so staging and jobs without
// --key-file work — else as plaintext read with the job's key. Neither is
// errNoKey, before anything is sent.
func (e *Engine) moveReader(ctx context.Context, mv Move) (*storage.Repo, *msg.SealedRestore, error) {
	if !e.Repo.Encrypted() {
		return e.Repo, nil, nil
	}
	held, err := e.agentKey(ctx, mv.AgentID, mv.Ref.Dir, mv.Machine)
	if err != nil {
		return nil, nil, err
	}
	want := e.Repo.PublicKey().Fingerprint()
	if held == want {
		id := e.Repo.ID()
		return e.Repo, &msg.SealedRestore{RepoID: hex.EncodeToString(id[:]), KeyFingerprint: want}, nil
	}
	if mv.JobID != "" {
		if r, ok := e.keys.Load(mv.JobID); ok {
			return r.(*storage.Repo), nil, nil
		}
	}
	return nil, nil, keyMissing(held, want)
}

// agentKey asks a target agent which repository key it holds ("" none).
func (e *Engine) agentKey(ctx context.Context, agentID, dir, machine string) (string, error) {
	var st msg.TargetStatusResponse
	if err := e.Agents.Call(ctx, agentID, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: dir, Machine: machine}, &st); err != nil {
		return "", fmt.Errorf("target agent: %w", err)
	}
	return st.RepositoryKey, nil
}

// errNoKey: an encrypted repository's blocks cannot be moved — the target
// agent holds no key of the repository and the job was given none.
var errNoKey = errors.New("the repository is encrypted and neither the job nor the target agent holds its private key")

// keyMissing says what is missing: the controller never holds the key.
func keyMissing(held, want string) error {
	if held != "" {
		return fmt.Errorf("%w: the target agent holds another repository key (fingerprint %.16s…; this repository's is %.16s…): install the right one there (ferry-agent key install) or give --key-file",
			errNoKey, held, want)
	}
	return fmt.Errorf("%w: give --key-file (kept in memory only, so a controller restart needs it again) or install the key on the target agent (ferry-agent key install)", errNoKey)
}
