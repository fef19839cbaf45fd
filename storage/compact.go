package storage

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/storage/internal/pack"
	"github.com/zeebo/blake3"
)

// CompactOptions bound one compaction.
type CompactOptions struct {
	// MaxBytes bounds the plain bytes one call re-encodes (0: no bound);
	// the controller's background compactor calls it with a budget per
	// tick, which is its rate.
	MaxBytes int64
	// ColderThan leaves the chunks of packs created less than this long
	// ago: under churn most of them are superseded within a few cycles and
	// dropped by retention, and re-encoding them would be wasted work.
	ColderThan time.Duration
}

// CompactReport says what a compaction did.
type CompactReport struct {
	Chunks      int64 // chunks re-encoded
	PlainBytes  int64 // their plain size
	BytesBefore int64 // their records before
	BytesAfter  int64 // and after
	Damaged     int64 // S2 chunks that did not decode to their hash: left for verify
	More        bool  // the budget ran out with candidates left
}

// compactStep bounds one append + fdatasync + transaction of a compaction,
// like gcCopyBytes bounds a repack step: writes share the write lock.
const (
	compactStepBytes = 8 << 20
	compactQuery     = 256
)

// Compact re-encodes cold S2 chunks to zstd (docs/storage-format.md
// "Compaction"): the controller stores what it builds at ingest as S2,
// which costs little CPU, and this pass gives the space back later at a
// bounded rate. Each re-encoded chunk is appended to the open pack and
// fdatasynced before its index row points at it; its old record becomes
// dead space that GC's repack reclaims. Only plain repositories hold S2
// chunks of the controller's making; sealed chunks are never touched.
// Interrupting it (ctx or kill) is safe.
func (r *Repo) Compact(ctx context.Context, opts CompactOptions) (CompactReport, error) {
	c := r.c
	var rep CompactReport
	if err := c.check(); err != nil {
		return rep, err
	}
	c.gcMu.Lock()
	defer c.gcMu.Unlock()
	err := c.compact(ctx, opts, &rep)
	if rep.Chunks > 0 || rep.Damaged > 0 {
		c.log.Info("compaction done", "chunks", rep.Chunks, "plain_bytes", rep.PlainBytes,
			"bytes_before", rep.BytesBefore, "bytes_after", rep.BytesAfter, "damaged", rep.Damaged, "more", rep.More)
	}
	return rep, err
}

// compact runs under gcMu: GC's repack moves chunk records too.
func (c *core) compact(ctx context.Context, opts CompactOptions, rep *CompactReport) error {
	cutoff := c.clock().Add(-opts.ColderThan).UnixNano()
	after := int64(0)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		rows, err := c.compactCandidates(ctx, after, cutoff)
		if err != nil {
			return err
		}
		if len(rows) == 0 {
			return nil
		}
		after = rows[len(rows)-1].id
		var step []recoded
		var stepBytes int64
		for i, row := range rows {
			if opts.MaxBytes > 0 && rep.PlainBytes+stepBytes >= opts.MaxBytes {
				rep.More = true
				return c.recodeStep(ctx, step, rep)
			}
			rc, ok, err := c.recode(row)
			if err != nil {
				return err
			}
			if !ok {
				rep.Damaged++
				continue
			}
			step = append(step, rc)
			stepBytes += int64(row.plainLen)
			if stepBytes >= compactStepBytes || i == len(rows)-1 {
				if err := c.recodeStep(ctx, step, rep); err != nil {
					return err
				}
				step, stepBytes = step[:0], 0
			}
		}
		if len(rows) < compactQuery {
			return nil
		}
	}
}

// compactCandidates returns the next S2 chunks of plain records in packs
// created at or before cutoff, in id order after after.
func (c *core) compactCandidates(ctx context.Context, after, cutoff int64) ([]chunkRow, error) {
	rs, err := c.db.QueryContext(ctx, `SELECT c.id, c.hash, c.pack_id, c.offset, c.length, c.plain_len, c.codec, c.key_slot
		FROM chunks c JOIN packs p ON p.id = c.pack_id
		WHERE c.codec = ? AND c.key_slot = 0 AND c.id > ? AND p.created_ns <= ?
		ORDER BY c.id LIMIT ?`, CodecS2, after, cutoff, compactQuery)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []chunkRow
	for rs.Next() {
		row, err := scanChunk(rs)
		if err != nil {
			return nil, err
		}
		out = append(out, row)
	}
	return out, rs.Err()
}

// recoded is one chunk's new record, waiting for its step.
type recoded struct {
	row     chunkRow
	codec   Codec
	payload []byte
}

// recode reads an S2 chunk, checks it decodes to its hash, and encodes it
// again with zstd (or as is, if zstd does not save 1/32 of it). ok is false
// for a chunk that fails the check: such a chunk is left as it is for
// verify to find and mark, not copied into a new record.
func (c *core) recode(row chunkRow) (recoded, bool, error) {
	ch, err := c.readChunkRecord(row)
	if err != nil {
		c.log.Warn("compaction skips a chunk it cannot read", "hash", row.hash, "pack", packName(row.pack), "err", err)
		return recoded{}, false, nil
	}
	plain, err := c.zc.decode(Codec(ch.Codec), ch.Data, int(ch.PlainLen))
	if err != nil || blake3.Sum256(plain) != row.hash {
		c.log.Warn("compaction skips a chunk that does not decode to its hash", "hash", row.hash, "pack", packName(row.pack), "err", err)
		return recoded{}, false, nil
	}
	codec, data := c.zc.compress(plain)
	payload := pack.EncodeChunk(pack.Chunk{Hash: row.hash, Codec: uint8(codec), PlainLen: uint32(len(plain)), Data: data})
	return recoded{row: row, codec: codec, payload: payload}, true, nil
}

// recodeStep appends a step's records to the open pack, fdatasyncs them,
// and points the chunks' rows at them in one transaction. A row that
// changed since it was read (moved, deleted, stored again after damage)
// keeps what it has; its new record is dead space.
func (c *core) recodeStep(ctx context.Context, step []recoded, rep *CompactReport) error {
	if len(step) == 0 {
		return nil
	}
	unlock := c.lockWrite()
	defer unlock()
	if err := c.check(); err != nil {
		return err
	}
	b, err := c.newBatch(ctx)
	if err != nil {
		return err
	}
	offs := make([]int64, len(step))
	lens := make([]int64, len(step))
	for i, rc := range step {
		offs[i], lens[i] = b.add(pack.TypeChunk, 0, rc.payload, rc.row.hash, 0)
	}
	if err := c.flush(b); err != nil {
		return err
	}
	c.fail(FailCompactStep)
	var done CompactReport
	err = c.inTx(ctx, func(tx *sql.Tx) error {
		if err := c.indexBatch(ctx, tx, b); err != nil {
			return err
		}
		for i, rc := range step {
			res, err := tx.ExecContext(ctx, `UPDATE chunks SET pack_id=?, offset=?, length=?, codec=?
				WHERE id=? AND pack_id=? AND offset=? AND codec=?`,
				int64(b.op.id), offs[i], lens[i], rc.codec, rc.row.id, int64(rc.row.pack), rc.row.off, CodecS2)
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k == 1 {
				done.Chunks++
				done.PlainBytes += int64(rc.row.plainLen)
				done.BytesBefore += rc.row.length
				done.BytesAfter += lens[i]
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storage: compaction step: %w", err)
	}
	c.finish(ctx, b)
	rep.Chunks += done.Chunks
	rep.PlainBytes += done.PlainBytes
	rep.BytesBefore += done.BytesBefore
	rep.BytesAfter += done.BytesAfter
	return nil
}
