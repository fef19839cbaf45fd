package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"time"

	"github.com/ferrydr/ferry/storage/internal/pack"
)

// GCOptions tune a garbage collection.
type GCOptions struct {
	// RepackBelow: a sealed pack whose live fraction is below this is
	// repacked (its live records copied, the pack removed). Default 0.5.
	RepackBelow float64
	// CompactColderThan: S2 chunks in packs older than this are re-encoded
	// to zstd before the packs are weighed (Compact); 0 re-encodes all.
	CompactColderThan time.Duration
}

// GCReport says what a collection did.
type GCReport struct {
	ChunksDeleted int64
	PacksDeleted  int64
	PacksRepacked int64
	BytesFreed    int64
	RowsSwept     int64
	ChunksRecoded int64 // S2 chunks re-encoded to zstd (Compact)
	BytesRecoded  int64 // their records' size before
	RecodeSaved   int64 // bytes their new records are smaller by
}

// gcBatch bounds every GC transaction so that writes, which share the
// write lock, never wait long behind GC.
const (
	gcChunkBatch = 512
	gcCopyBytes  = 8 << 20
)

// GC removes rows no retained point reads, chunks nothing references, and
// packs that hold little live data. It runs online, in small transactions
// under the write lock; a chunk that a concurrent Write dedups against is
// never deleted (the Write re-checks inside its own transaction and the GC
// checks references inside its). Interrupting it (ctx or kill) is safe.
func (r *Repo) GC(ctx context.Context, opts GCOptions) (GCReport, error) {
	c := r.c
	var rep GCReport
	if err := c.check(); err != nil {
		return rep, err
	}
	if opts.RepackBelow == 0 {
		opts.RepackBelow = 0.5
	}
	if opts.RepackBelow < 0 || opts.RepackBelow > 1 {
		return rep, fmt.Errorf("storage: RepackBelow %v outside [0, 1]", opts.RepackBelow)
	}
	c.gcMu.Lock()
	defer c.gcMu.Unlock()
	if err := c.settle(ctx); err != nil {
		return rep, err
	}
	var err error
	if rep.RowsSwept, err = sweepAll(ctx, c.db, func() (func(), error) { return c.lockSettled(ctx) }); err != nil {
		return rep, err
	}
	if err := c.gcChunks(ctx, &rep); err != nil {
		return rep, err
	}
	// Compaction before the packs are weighed: the records it leaves
	// behind are dead space that this GC's repack can reclaim.
	var crep CompactReport
	err = c.compact(ctx, CompactOptions{ColderThan: opts.CompactColderThan}, &crep)
	rep.ChunksRecoded, rep.BytesRecoded, rep.RecodeSaved = crep.Chunks, crep.BytesBefore, crep.BytesBefore-crep.BytesAfter
	// Compaction rewrites whole packs, as a repack does.
	rep.PacksRepacked += crep.Packs
	rep.PacksDeleted += crep.Packs
	rep.BytesFreed += crep.DeadFreed
	if err != nil {
		return rep, err
	}
	// A folded patch was the last reader of its base (foldablePatches):
	// the bases go now, and the repack below reclaims their space.
	if crep.Folded > 0 {
		if err := c.gcChunks(ctx, &rep); err != nil {
			return rep, err
		}
	}
	if err := c.gcPacks(ctx, opts, &rep); err != nil {
		return rep, err
	}
	c.log.Info("gc done", "chunks_deleted", rep.ChunksDeleted, "packs_deleted", rep.PacksDeleted,
		"packs_repacked", rep.PacksRepacked, "bytes_freed", rep.BytesFreed, "rows_swept", rep.RowsSwept,
		"chunks_recoded", rep.ChunksRecoded, "recode_saved", rep.RecodeSaved)
	return rep, nil
}

// gcChunks deletes unreferenced chunk rows in batches; the reference check
// and the delete are one transaction under the write lock.
//
// It walks the ids downwards: a patch record's id is above its base's (the
// base was stored first, and rows replaced in place keep their ids), so a
// patch nothing reads goes before its base is looked at, and a chain
// nothing reads goes in one run.
func (c *core) gcChunks(ctx context.Context, rep *GCReport) error {
	after := int64(math.MaxInt64)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		c.fail(FailGCDelete)
		// Each step folds the recent level first: a row written since the
		// last step may name a chunk no row of the main table names.
		unlock, err := c.lockSettled(ctx)
		if err != nil {
			return err
		}
		var last int64
		var n int
		err = c.inTx(ctx, func(tx *sql.Tx) error {
			rows, err := tx.QueryContext(ctx, `SELECT id, length FROM chunks WHERE id<? ORDER BY id DESC LIMIT ?`, after, gcChunkBatch)
			if err != nil {
				return err
			}
			type cl struct{ id, length int64 }
			var batch []cl
			for rows.Next() {
				var x cl
				if err := rows.Scan(&x.id, &x.length); err != nil {
					rows.Close()
					return err
				}
				batch = append(batch, x)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			n = len(batch)
			for _, x := range batch {
				last = x.id
				// A chunk a patch record applies to lives as long as the
				// patch does (its rows go in an earlier pass or a later run).
				res, err := tx.ExecContext(ctx, `DELETE FROM chunks WHERE id=?1 AND NOT EXISTS (SELECT 1 FROM changes WHERE chunk_id=?1)
					AND NOT EXISTS (SELECT 1 FROM chunks WHERE base_id=?1)`, x.id)
				if err != nil {
					return err
				}
				if k, _ := res.RowsAffected(); k == 1 {
					rep.ChunksDeleted++
					rep.BytesFreed += x.length
					// Its damage mark goes with it: a later chunk may
					// reuse the id.
					if _, err := tx.ExecContext(ctx, `DELETE FROM damaged_chunks WHERE chunk_id=?`, x.id); err != nil {
						return err
					}
				}
			}
			return nil
		})
		unlock()
		if err != nil {
			return err
		}
		if n < gcChunkBatch {
			return nil
		}
		after = last
	}
}

// packLive is a sealed pack's live content.
type packLive struct {
	id      uint64
	size    int64
	live    int64
	chunks  []chunkRow
	records []recordRow
	hasDead bool
	// fold names the patch records compaction folds (foldablePatches);
	// the pack's other patch records are copied as they are.
	fold map[int64]bool
}

type recordRow struct {
	off, length int64
	typ, flags  uint8
	pointID     int64
}

// recordLive decides whether a point record must survive a repack.
func (c *core) recordLive(ctx context.Context, rr recordRow) (bool, error) {
	if rr.typ == pack.TypePointDelete {
		return true, nil // tombstones stay (see docs: limits)
	}
	var state, machine string
	err := c.db.QueryRowContext(ctx, `SELECT state, machine FROM points WHERE id=?`, rr.pointID).Scan(&state, &machine)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	switch state {
	case "committed", "pending":
		return true, nil
	}
	// A deleted point's records live while any of its rows do.
	var one int
	err = c.db.QueryRowContext(ctx, `SELECT 1 FROM changes WHERE disk_id IN (SELECT id FROM disks WHERE machine=?) AND seq=? LIMIT 1`,
		machine, rr.pointID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

func (c *core) gcPacks(ctx context.Context, opts GCOptions, rep *GCReport) error {
	rows, err := c.db.QueryContext(ctx, `SELECT id, size FROM packs WHERE state='sealed' ORDER BY id`)
	if err != nil {
		return err
	}
	var packs []packLive
	for rows.Next() {
		var pl packLive
		var id int64
		if err := rows.Scan(&id, &pl.size); err != nil {
			rows.Close()
			return err
		}
		pl.id = uint64(id)
		packs = append(packs, pl)
	}
	rows.Close()
	for _, pl := range packs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := c.loadLive(ctx, &pl); err != nil {
			return err
		}
		frac := float64(pl.live) / float64(max(pl.size, 1))
		if pl.live > 0 && frac >= opts.RepackBelow {
			continue
		}
		if err := c.repack(ctx, &pl, nil); err != nil {
			return fmt.Errorf("repack %s: %w", packName(pl.id), err)
		}
		if pl.live > 0 {
			rep.PacksRepacked++
		}
		rep.PacksDeleted++
		rep.BytesFreed += pl.size - pl.live
	}
	return nil
}

func (c *core) loadLive(ctx context.Context, pl *packLive) error {
	// A pack that was open for long and sealed within minutes may hold
	// chunks of the recent level: fold it, so the list below has them all
	// (repack's last step would otherwise find them and fail the repack).
	if c.recent.inPack(pl.id) {
		if err := c.settle(ctx); err != nil {
			return err
		}
	}
	rows, err := c.db.QueryContext(ctx, `SELECT `+chunkCols+` FROM chunks WHERE pack_id=? ORDER BY offset`, int64(pl.id))
	if err != nil {
		return err
	}
	for rows.Next() {
		ch, err := scanChunk(rows)
		if err != nil {
			rows.Close()
			return err
		}
		pl.chunks = append(pl.chunks, ch)
		pl.live += ch.length
	}
	rows.Close()
	rrows, err := c.db.QueryContext(ctx, `SELECT offset, length, type, flags, point_id FROM records WHERE pack_id=? ORDER BY offset`, int64(pl.id))
	if err != nil {
		return err
	}
	var all []recordRow
	for rrows.Next() {
		var rr recordRow
		if err := rrows.Scan(&rr.off, &rr.length, &rr.typ, &rr.flags, &rr.pointID); err != nil {
			rrows.Close()
			return err
		}
		all = append(all, rr)
	}
	rrows.Close()
	for _, rr := range all {
		live, err := c.recordLiveIn(ctx, pl.id, rr)
		if err != nil {
			return err
		}
		if live {
			pl.records = append(pl.records, rr)
			pl.live += rr.length
		} else {
			pl.hasDead = true
		}
	}
	return nil
}

func (c *core) recordLiveIn(ctx context.Context, id uint64, rr recordRow) (bool, error) {
	if rr.typ != pack.TypePointLabel {
		return c.recordLive(ctx, rr)
	}
	var state string
	var serial uint32
	err := c.db.QueryRowContext(ctx, `SELECT state, label_serial FROM points WHERE id=?`, rr.pointID).Scan(&state, &serial)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && state != "committed") {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	rec, err := c.readRecord(id, rr.off, rr.length)
	if err != nil {
		return false, err
	}
	l, err := pack.DecodeLabel(rec.Payload)
	return err == nil && l.Serial == serial, nil
}

// repack copies a pack's live chunks and records to the open pack in
// bounded steps (each: append, fdatasync, one transaction moving the rows),
// then drops the pack. Encrypted chunks are copied as ciphertext with their
// sealed key record: no private key is needed.
//
// With recode set (compaction), S2 chunks of plain records are re-encoded
// to zstd on the way (recodeItem) and counted there.
func (c *core) repack(ctx context.Context, pl *packLive, recode *CompactReport) error {
	var items []copyItem
	for i := range pl.chunks {
		items = append(items, copyItem{chunk: &pl.chunks[i]})
	}
	for i := range pl.records {
		items = append(items, copyItem{rec: &pl.records[i]})
	}
	for len(items) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		var step []copyItem
		var n int64
		for len(items) > 0 && (len(step) == 0 || n < gcCopyBytes) {
			it := items[0]
			items = items[1:]
			off, length := int64(0), int64(0)
			if it.chunk != nil {
				off, length = it.chunk.off, it.chunk.length
			} else {
				off, length = it.rec.off, it.rec.length
			}
			rec, err := c.readRecord(pl.id, off, length)
			if err != nil {
				return err
			}
			it.raw = rec.Payload
			if it.rec != nil {
				it.rec.flags = rec.Flags
			}
			if it.chunk != nil {
				it.codec, it.plain = it.chunk.codec, it.chunk.plainLen
				switch {
				case recode != nil && it.chunk.patch && pl.fold[it.chunk.id]:
					c.foldItem(ctx, &it, recode)
				case recode != nil && it.chunk.codec == CodecS2 && it.chunk.slot == 0:
					c.recodeItem(&it, recode)
				}
			}
			step = append(step, it)
			n += length
		}
		if err := c.copyStep(ctx, pl.id, step); err != nil {
			return err
		}
		if recode != nil {
			for _, it := range step {
				if it.recoded {
					recode.Chunks++
					recode.PlainBytes += int64(it.plain)
					recode.BytesBefore += it.chunk.length
					recode.BytesAfter += int64(pack.RecordOverhead + len(it.raw))
				}
			}
		}
	}
	c.fail(FailGCRepack)
	// The pack goes only if no row names it: a chunk of the recent level
	// in it (a pack sealed within minutes) is folded first, to be counted.
	c.writeMu.Lock()
	unlock := c.writeMu.Unlock
	if c.recent.inPack(pl.id) {
		if err := c.foldLocked(ctx); err != nil {
			unlock()
			return err
		}
	}
	err := c.inTx(ctx, func(tx *sql.Tx) error {
		var k int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM chunks WHERE pack_id=?`, int64(pl.id)).Scan(&k); err != nil {
			return err
		}
		if k != 0 {
			return fmt.Errorf("storage: pack %s still has %d chunks after repack", packName(pl.id), k)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM records WHERE pack_id=?`, int64(pl.id)); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM packs WHERE id=?`, int64(pl.id))
		return err
	})
	unlock()
	if err != nil {
		return err
	}
	c.files.forget(pl.id)
	// Not fsynced: a pack file that survives a crash here is not in the
	// index and is removed by the next Open.
	if err := os.Remove(packPath(c.dir, pl.id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return opErr("remove pack", packPath(c.dir, pl.id), err)
	}
	return nil
}

type copyItem struct {
	chunk   *chunkRow
	rec     *recordRow
	raw     []byte
	codec   Codec // the chunk's codec in raw (recodeItem may change it)
	recoded bool  // raw was re-encoded from S2, or folded from a patch
	folded  bool  // raw is the whole block of a patch record (foldItem)
	plain   int   // the plain length of raw's chunk
	damaged bool  // an S2 chunk that did not decode to its hash: copied as is, and marked
}

// copyStep appends one step of a repack to the open pack and moves the
// rows in one transaction.
func (c *core) copyStep(ctx context.Context, from uint64, step []copyItem) error {
	// It moves rows of the main table by id; the recent level's rows
	// are not in its list (see repack's last step).
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if err := c.check(); err != nil {
		return err
	}
	b, err := c.newBatch(ctx)
	if err != nil {
		return err
	}
	type moved struct {
		it          copyItem
		off, length int64
	}
	var mv []moved
	for _, it := range step {
		if it.chunk != nil {
			if it.chunk.slot != 0 {
				sk, err := c.sealedKey(ctx, it.chunk.slot)
				if err != nil {
					return err
				}
				b.needKey(sk)
			}
			off, n := b.add(pack.TypeChunk, 0, it.raw, it.chunk.hash, 0)
			mv = append(mv, moved{it, off, n})
		} else {
			off, n := b.add(it.rec.typ, it.rec.flags, it.raw, Hash{}, it.rec.pointID)
			mv = append(mv, moved{it, off, n})
		}
	}
	if err := c.flush(b); err != nil {
		return err
	}
	if slices.ContainsFunc(step, func(it copyItem) bool { return it.recoded }) {
		c.fail(FailCompactStep)
	}
	err = c.inTx(ctx, func(tx *sql.Tx) error {
		if err := c.indexBatch(ctx, tx, b); err != nil {
			return err
		}
		for _, m := range mv {
			if m.it.chunk != nil {
				// A folded patch becomes a whole chunk under the same id:
				// the rows that read it, and patches over it, read the
				// same block.
				if _, err := tx.ExecContext(ctx, `UPDATE chunks SET pack_id=?, offset=?, length=?, codec=?, plain_len=?,
					base_id=CASE WHEN ? THEN NULL ELSE base_id END, depth=CASE WHEN ? THEN 0 ELSE depth END WHERE id=? AND pack_id=?`,
					int64(b.op.id), m.off, m.length, m.it.codec, m.it.plain, m.it.folded, m.it.folded, m.it.chunk.id, int64(from)); err != nil {
					return err
				}
				if m.it.damaged {
					if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO damaged_chunks(chunk_id, found_ns, reason) VALUES (?, ?, 'compaction')`,
						m.it.chunk.id, c.clock().UnixNano()); err != nil {
						return err
					}
				}
			} else if _, err := tx.ExecContext(ctx, `DELETE FROM records WHERE pack_id=? AND offset=?`, int64(from), m.it.rec.off); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.finish(ctx, b)
	return nil
}
