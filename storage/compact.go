package storage

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ferrydr/ferry/storage/internal/pack"
	"github.com/zeebo/blake3"
)

// CompactOptions bound one compaction.
type CompactOptions struct {
	// MaxBytes bounds the plain bytes one call re-encodes (0: no bound):
	// the call stops after the pack in which it reached the budget. The
	// controller's background compactor calls it with a budget per tick,
	// which is its rate.
	MaxBytes int64
	// ColderThan leaves packs created less than this long ago: under churn
	// most of their chunks are superseded within a few cycles and dropped
	// by retention, and re-encoding them would be wasted work.
	ColderThan time.Duration
}

// CompactReport says what a compaction did.
type CompactReport struct {
	Packs       int64 // packs rewritten (and removed)
	DeadFreed   int64 // the dead space those packs held
	Chunks      int64 // chunks re-encoded
	PlainBytes  int64 // their plain size
	BytesBefore int64 // their records before
	BytesAfter  int64 // and after
	Folded      int64 // patch records made whole chunks (counted in Chunks too)
	Damaged     int64 // S2 chunks that did not decode to their hash, and patches that do not give theirs: copied as they were, and marked damaged
	More        bool  // the budget ran out with packs left
}

// Compact re-encodes cold S2 chunks to zstd (docs/storage-format.md
// "Compaction"): the controller stores what it builds at ingest, and what
// agents send on fast links, as S2, which costs little CPU; this gives the
// space back later at a bounded rate. It rewrites each sealed pack that
// holds such chunks the way GC's repack does — its live records copied to
// the open pack through append, fdatasync and one index transaction per
// step, the S2 chunks re-encoded on the way, then the pack removed — so no
// dead space is left behind. Sealed (encrypted) chunks are never touched.
// Interrupting it (ctx or kill) is safe.
func (r *Repo) Compact(ctx context.Context, opts CompactOptions) (CompactReport, error) {
	c := r.c
	var rep CompactReport
	if err := c.check(); err != nil {
		return rep, err
	}
	c.gcMu.Lock()
	defer c.gcMu.Unlock()
	// Compaction reads the main tables only. Chunks colder than
	// recentMaxAge are there (the level is folded by age); asked for
	// younger ones, fold the level first.
	fold := c.foldIfOld
	if opts.ColderThan < recentMaxAge {
		fold = c.settle
	}
	if err := fold(ctx); err != nil {
		return rep, err
	}
	err := c.compact(ctx, opts, &rep)
	if rep.Packs > 0 {
		c.log.Info("compaction done", "packs", rep.Packs, "chunks", rep.Chunks, "plain_bytes", rep.PlainBytes,
			"bytes_before", rep.BytesBefore, "bytes_after", rep.BytesAfter, "damaged", rep.Damaged, "more", rep.More)
	}
	return rep, err
}

// compact runs under gcMu: it moves records as GC's repack does.
func (c *core) compact(ctx context.Context, opts CompactOptions, rep *CompactReport) error {
	packs, err := c.compactPacks(ctx, c.clock().Add(-opts.ColderThan).UnixNano())
	if err != nil {
		return err
	}
	for _, pl := range packs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if opts.MaxBytes > 0 && rep.PlainBytes >= opts.MaxBytes {
			rep.More = true
			return nil
		}
		if err := c.loadLive(ctx, &pl); err != nil {
			return err
		}
		if err := c.repack(ctx, &pl, rep); err != nil {
			return fmt.Errorf("compact %s: %w", packName(pl.id), err)
		}
		rep.Packs++
		rep.DeadFreed += pl.size - pl.live
	}
	return nil
}

// compactPacks returns the sealed packs created at or before cutoff that
// hold S2 chunks of plain records or patch records worth folding (none of
// them known damaged), oldest first, each with the patch records to fold.
func (c *core) compactPacks(ctx context.Context, cutoff int64) ([]packLive, error) {
	var out []packLive
	at := map[uint64]int{} // pack id → index in out
	add := func(id uint64, size int64) *packLive {
		i, ok := at[id]
		if !ok {
			i = len(out)
			at[id] = i
			out = append(out, packLive{id: id, size: size})
		}
		return &out[i]
	}
	rows, err := c.db.QueryContext(ctx, `SELECT p.id, p.size, p.created_ns FROM packs p
		WHERE p.state = 'sealed' AND p.created_ns <= ? AND p.id IN (
			SELECT pack_id FROM chunks WHERE codec = ? AND key_slot = 0
				AND id NOT IN (SELECT chunk_id FROM damaged_chunks))`, cutoff, CodecS2)
	if err != nil {
		return nil, err
	}
	created := map[uint64]int64{}
	for rows.Next() {
		var id, size, ns int64
		if err := rows.Scan(&id, &size, &ns); err != nil {
			rows.Close()
			return nil, err
		}
		add(uint64(id), size)
		created[uint64(id)] = ns
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	fold, err := c.foldablePatches(ctx, cutoff)
	if err != nil {
		return nil, err
	}
	for _, f := range fold {
		pl := add(f.pack, f.size)
		created[f.pack] = f.created
		if pl.fold == nil {
			pl.fold = map[int64]bool{}
		}
		pl.fold[f.chunk] = true
	}
	sort.SliceStable(out, func(i, j int) bool { return created[out[i].id] < created[out[j].id] })
	return out, nil
}

// foldable is a patch record compaction folds, and its pack.
type foldable struct {
	chunk, created, size int64
	pack                 uint64
}

// foldablePatches lists the patch records in sealed packs created at or
// before cutoff whose fold frees their base: no change row names the base
// and no other patch record applies to it, in either level of the index.
// Folding any other patch would store its whole block beside a base that
// stays: a repository under churn would grow by a block for every few
// KiB patched (docs/storage-format.md "Patch records"). A patch over a
// zero block is never folded: it has no base to free.
func (c *core) foldablePatches(ctx context.Context, cutoff int64) ([]foldable, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT ch.id, ch.base_id, p.id, p.size, p.created_ns
		FROM chunks ch JOIN packs p ON p.id = ch.pack_id
		WHERE ch.base_id IS NOT NULL AND ch.base_id <> 0
			AND p.state = 'sealed' AND p.created_ns <= ?
			AND NOT EXISTS (SELECT 1 FROM changes WHERE chunk_id = ch.base_id)
			AND NOT EXISTS (SELECT 1 FROM chunks o WHERE o.base_id = ch.base_id AND o.id <> ch.id)
			AND ch.id NOT IN (SELECT chunk_id FROM damaged_chunks)`, cutoff)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var named map[int64]bool
	var out []foldable
	for rows.Next() {
		var f foldable
		var base, pack int64
		if err := rows.Scan(&f.chunk, &base, &pack, &f.size, &f.created); err != nil {
			return nil, err
		}
		if named == nil {
			named = c.recent.named()
		}
		if named[base] {
			continue
		}
		f.pack = uint64(pack)
		out = append(out, f)
	}
	return out, rows.Err()
}

// recodeItem re-encodes an S2 chunk's record payload with zstd at the
// default level (compressCold; or as is, if zstd does not save 1/32),
// after checking that it decodes to its hash.
// One that does not is copied as it was and marked damaged with the step,
// for verify and the next cycles to repair; it is never re-encoded.
func (c *core) recodeItem(it *copyItem, rep *CompactReport) {
	row := it.chunk
	ch, err := pack.DecodeChunk(it.raw)
	var plain []byte
	if err == nil {
		plain, err = c.zc.decode(Codec(ch.Codec), ch.Data, int(ch.PlainLen))
	}
	if err != nil || blake3.Sum256(plain) != row.hash {
		c.log.Warn("compaction found a chunk that does not decode to its hash; it is marked damaged", "hash", row.hash, "pack", packName(row.pack), "err", err)
		it.damaged = true
		rep.Damaged++
		return
	}
	codec, data := c.zc.compressCold(plain)
	it.raw = pack.EncodeChunk(pack.Chunk{Hash: row.hash, Codec: uint8(codec), PlainLen: uint32(len(plain)), Data: data})
	it.codec, it.recoded = codec, true
}

// foldItem makes a patch record a whole chunk (zstd, compressCold): its
// block rebuilt from its base and checked against its hash, which is
// where an agent's claim is finally proven (docs/storage-format.md "Patch
// records"). A patch that does not give its hash is copied as it was and
// marked damaged; one whose base cannot be read just now is copied as it
// was.
func (c *core) foldItem(ctx context.Context, it *copyItem, rep *CompactReport) {
	row := it.chunk
	plain, err := (&Repo{c: c}).readChunkRow(ctx, *row)
	var ce *CorruptError
	switch {
	case errors.As(err, &ce) || errors.Is(err, ErrHashMismatch):
		c.log.Warn("compaction found a patch that does not give its hash; it is marked damaged", "hash", row.hash, "pack", packName(row.pack), "err", err)
		it.damaged = true
		rep.Damaged++
		return
	case err != nil:
		c.log.Warn("compaction could not fold a patch; it stays a patch", "hash", row.hash, "err", err)
		return
	}
	codec, data := c.zc.compressCold(plain)
	it.raw = pack.EncodeChunk(pack.Chunk{Hash: row.hash, Codec: uint8(codec), PlainLen: uint32(len(plain)), Data: data})
	it.codec, it.plain, it.recoded, it.folded = codec, len(plain), true, true
	rep.Folded++
}
