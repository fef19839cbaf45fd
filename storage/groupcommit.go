package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/ferrydr/ferry/storage/internal/pack"
)

// Group commit. Every durable write takes writeMu through a pack append,
// an fdatasync and an index transaction (two fsyncs with the WAL's). One
// writer at a time, that is ~5 ms per Write whatever its size, and a
// recovery plan's members queue on it one after another. So writers that
// arrive while a batch is being made durable wait together, and the next
// holder of writeMu commits all of them at once: one append, one
// fdatasync, one transaction. A chunk two of them bring is stored once.
//
// A writer whose batch cannot commit (its point is no longer pending, or a
// chunk it deduped against was deleted by GC) must not fail the others:
// the transaction checks every writer first, and if any fails, it is
// rolled back and the rest are committed without it (another append over
// the same bytes, another fdatasync; GC races and aborts are rare).

// maxGroupBytes bounds the prepared bytes one group commit appends, so a
// burst of writers does not make one huge batch (memory, and the first
// writer's wait). A single writer's batch is never split.
const maxGroupBytes = 64 << 20

// writeReq is one writer's batch waiting for a group commit. done, missing
// and err are set by the committer under writeMu and read by the writer
// after it takes writeMu itself.
type writeReq struct {
	ctx     context.Context
	pointID int64
	items   []writeItem
	have    map[Hash]int64     // deduped: chunk ids looked up before the commit
	preps   map[Hash]*prepared // new chunks to append
	added   uint64             // chunksAdded when have was looked up
	recheck bool               // look preps up again whatever chunksAdded says

	done     bool
	missing  []Hash  // deduped chunks that vanished: the writer stores them and comes again
	recorded []int64 // the ids of the patch records stored, to check (patchcheck.go)
	err      error
}

func (r *writeReq) finish(missing []Hash, err error) {
	r.done, r.missing, r.err = true, missing, err
}

func (r *writeReq) size() int {
	n := 0
	for _, p := range r.preps {
		n += len(p.data)
	}
	return n
}

// commitQueue holds the batches waiting for writeMu.
type commitQueue struct {
	mu   sync.Mutex
	reqs []*writeReq
}

func (q *commitQueue) push(r *writeReq) {
	q.mu.Lock()
	q.reqs = append(q.reqs, r)
	q.mu.Unlock()
}

// take removes the oldest waiting batches up to maxGroupBytes (at least
// one); the rest wait for their own writers to take writeMu.
func (q *commitQueue) take() []*writeReq {
	q.mu.Lock()
	defer q.mu.Unlock()
	n, bytes := 0, 0
	for n < len(q.reqs) {
		bytes += q.reqs[n].size()
		if n > 0 && bytes > maxGroupBytes {
			break
		}
		n++
	}
	out := append([]*writeReq(nil), q.reqs[:n]...)
	q.reqs = append(q.reqs[:0], q.reqs[n:]...)
	return out
}

// commitWrite queues req and returns once a group commit has made it
// durable (or failed it). Whoever holds writeMu next commits every batch
// queued by then, so a writer usually finds its own batch done when it
// gets the lock.
func (c *core) commitWrite(req *writeReq) ([]Hash, error) {
	c.queue.push(req)
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	for !req.done {
		c.commitGroup(c.queue.take())
	}
	// The rows are durable in the recent level whatever the fold does: a
	// fold that fails leaves them there, to be folded next time.
	if err := c.foldIfFull(context.WithoutCancel(req.ctx)); err != nil {
		c.log.Warn("folding the index's recent level", "err", err)
	}
	return req.missing, req.err
}

// commitGroup commits reqs together. Call with writeMu held. The group's
// work does not stop when the writer that happens to run it gives up: the
// others wait for it.
func (c *core) commitGroup(reqs []*writeReq) {
	live := make([]*writeReq, 0, len(reqs))
	for _, r := range reqs {
		if err := r.ctx.Err(); err != nil {
			r.finish(nil, err)
			continue
		}
		if err := c.check(); err != nil {
			r.finish(nil, err)
			continue
		}
		// Another writer may have stored some of these chunks while this
		// one prepared them (two machines, one dedup): those are deduped
		// now. Only looked up again when some batch stored chunks since.
		if r.recheck || c.chunksAdded.Load() != r.added {
			if err := c.dedupPrepared(r.ctx, r.have, r.preps); err != nil {
				r.finish(nil, err)
				continue
			}
		}
		live = append(live, r)
	}
	live = c.settlePatches(live)
	if len(live) == 0 {
		return
	}
	ctx := context.WithoutCancel(live[0].ctx)
	for len(live) > 0 {
		refused, err := c.writeGroup(ctx, live)
		if err != nil {
			for _, r := range live {
				r.finish(nil, err)
			}
			return
		}
		rest := live[:0]
		for _, r := range live {
			if !r.done {
				rest = append(rest, r)
			}
		}
		if !refused {
			for _, r := range rest {
				r.finish(nil, nil)
			}
			return
		}
		live = rest
	}
}

// settlePatches rebuilds the patch records of reqs that can no longer be
// stored as records: their hash is stored by now (or another batch of the
// group brings it), or their base is gone (GC). A patch's hash is only its
// writer's claim, so it must not share a row with anything; rebuilt and
// checked, the block deduplicates like any chunk. Under writeMu, so
// nothing stores these hashes between this check and the commit. Returns
// the batches still live.
func (c *core) settlePatches(reqs []*writeReq) []*writeReq {
	brought := map[Hash]int{}
	var hashes []Hash
	var bases []any
	for _, r := range reqs {
		for h, p := range r.preps {
			brought[h]++
			if p.patch != nil {
				hashes = append(hashes, h)
				if p.patch.base != 0 {
					bases = append(bases, p.patch.base)
				}
			}
		}
	}
	if len(hashes) == 0 {
		return reqs
	}
	ctx := context.WithoutCancel(reqs[0].ctx)
	stored, err := c.hashesWhere(ctx, hashes, false)
	var baseIDs map[int64]bool
	if err == nil {
		baseIDs, err = c.presentIDs(ctx, bases)
	}
	live := reqs[:0]
	for _, r := range reqs {
		if err != nil {
			r.finish(nil, err)
			continue
		}
		if rerr := c.rebuildUnsettled(r, brought, stored, baseIDs); rerr != nil {
			r.finish(nil, rerr)
			continue
		}
		live = append(live, r)
	}
	return live
}

// rebuildUnsettled is settlePatches for one batch.
func (c *core) rebuildUnsettled(r *writeReq, brought map[Hash]int, stored map[Hash]bool, baseIDs map[int64]bool) error {
	rebuilt := false
	for h, p := range r.preps {
		pp := p.patch
		if pp == nil || (brought[h] == 1 && !stored[h] && (pp.base == 0 || baseIDs[pp.base])) {
			continue
		}
		ch, err := pp.rebuild()
		if errors.Is(err, ErrHashMismatch) {
			// As at Write (planPatches): the point fails at its commit,
			// whatever else is stored; the block is not written.
			c.checks.refuse(r.pointID, 1)
			delete(r.preps, h)
			kept := make([]writeItem, 0, len(r.items))
			for _, it := range r.items {
				if it.zero || it.hash != h {
					kept = append(kept, it)
				}
			}
			r.items = kept
			continue
		}
		if err != nil {
			return err
		}
		pr, err := c.prepare(ch, true)
		if err != nil {
			return err
		}
		r.preps[h], rebuilt = pr, true
	}
	if !rebuilt {
		return nil
	}
	return c.dedupPrepared(r.ctx, r.have, r.preps)
}

// presentIDs returns which of the chunk ids are stored.
func (c *core) presentIDs(ctx context.Context, all []any) (map[int64]bool, error) {
	out := map[int64]bool{}
	var ids []any
	for _, id := range all {
		if _, ok := c.recent.chunk(id.(int64)); ok {
			out[id.(int64)] = true
		} else {
			ids = append(ids, id)
		}
	}
	for len(ids) > 0 {
		n := min(len(ids), locateBatch)
		got, err := column[int64](c.db.QueryContext(ctx, `SELECT id FROM chunks WHERE id IN (?`+strings.Repeat(",?", n-1)+`)`, ids[:n]...))
		if err != nil {
			return nil, err
		}
		for _, id := range got {
			out[id] = true
		}
		ids = ids[n:]
	}
	return out, nil
}

// writeGroup is one append + fdatasync + index transaction for reqs. A
// batch the transaction refuses (its point is not pending, or chunks it
// deduped vanished) is finished with that result and the transaction is
// rolled back: refused says the caller commits the others again.
func (c *core) writeGroup(ctx context.Context, reqs []*writeReq) (refused bool, err error) {
	b, err := c.newBatch(ctx)
	if err != nil {
		return false, err
	}
	defer func() { groupBufs.put(b.buf) }() // nothing keeps a slice of it: records are copied in and out
	pl, err := c.appendChunks(b, reqs)
	if err != nil {
		return false, err
	}
	if err := c.flush(b); err != nil {
		return false, err
	}
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	if refused, err := c.refuseStale(ctx, tx, reqs); refused || err != nil {
		return refused, err
	}
	if err := c.indexBatch(ctx, tx, b); err != nil {
		return false, err
	}
	delta := &recentDelta{nextID: c.recent.nextID}
	ids, err := c.insertChunks(ctx, tx, int64(b.op.id), pl, delta)
	if err != nil {
		return false, err
	}
	for _, r := range reqs {
		r.recorded = r.recorded[:0]
		for h, p := range r.preps {
			if p.patch != nil {
				r.recorded = append(r.recorded, ids[h])
			}
		}
	}
	// The rows go to the recent level (recent.go), in the order written:
	// a later row for the same block and point replaces an earlier one.
	chg, err := tx.PrepareContext(ctx, `INSERT INTO recent_changes(disk_id, block, seq, chunk_id) VALUES (?, ?, ?, ?)`)
	if err != nil {
		return false, err
	}
	defer chg.Close()
	for _, r := range reqs {
		for _, it := range r.items {
			var cid any
			ch := recentChange{disk: it.diskID, block: it.block, seq: r.pointID}
			if !it.zero {
				id, ok := ids[it.hash]
				if !ok {
					id = r.have[it.hash]
				}
				cid, ch.chunk = id, id
			}
			res, err := chg.ExecContext(ctx, it.diskID, it.block, r.pointID, cid)
			if err != nil {
				return false, err
			}
			if ch.at, err = res.LastInsertId(); err != nil {
				return false, err
			}
			delta.rows = append(delta.rows, ch)
		}
	}
	for _, r := range reqs {
		if n := pl.bytes[r]; n > 0 {
			if _, err := tx.ExecContext(ctx, `UPDATE points SET bytes=bytes+? WHERE id=?`, n, r.pointID); err != nil {
				return false, err
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return false, err
	}
	c.recent.apply(delta, c.clock())
	if len(pl.chunks) > 0 {
		c.chunksAdded.Add(1) // after the commit: see commitGroup
	}
	c.fail(FailIndexCommited)
	c.finish(ctx, b)
	return false, nil
}

// placedChunk is a chunk appended to the batch.
type placedChunk struct {
	p      *prepared
	off, n int64
	slot   uint32
}

// placement is a group's appended chunks, and the bytes each writer
// brought (a chunk two writers bring counts for the first).
type placement struct {
	chunks []placedChunk
	bytes  map[*writeReq]int64
}

// appendChunks adds the group's new chunks to b: each once, in the order
// of the blocks that bring them (the writer's order: ascending blocks per
// manifest part), so a restore reading a disk front to back reads packs
// mostly forwards and the kernel's readahead works; by hash, every read
// was a seek.
func (c *core) appendChunks(b *batch, reqs []*writeReq) (placement, error) {
	pl := placement{bytes: map[*writeReq]int64{}}
	type owned struct {
		h Hash
		r *writeReq
	}
	var order []owned
	placed := map[Hash]bool{}
	need := 4096
	for _, r := range reqs {
		for _, it := range r.items {
			if _, ok := r.preps[it.hash]; ok && !it.zero && !placed[it.hash] {
				placed[it.hash] = true
				order = append(order, owned{it.hash, r})
			}
		}
		var rest []Hash // a chunk no item names: keep it, deterministically
		for h := range r.preps {
			if !placed[h] {
				rest = append(rest, h)
			}
		}
		sort.Slice(rest, func(i, j int) bool { return string(rest[i][:]) < string(rest[j][:]) })
		for _, h := range rest {
			placed[h] = true
			order = append(order, owned{h, r})
		}
		// Encryption adds a nonce and tag per chunk, and a key record may
		// come first.
		for _, pr := range r.preps {
			need += pack.RecordOverhead + len(pr.data) + 64
		}
	}
	// One buffer for the batch's records (growing the buffer record by
	// record was a fifth of the controller's ingest CPU), reused from the
	// group before: writeGroup gives it back.
	b.buf = groupBufs.get(need)[:0]
	pl.chunks = make([]placedChunk, 0, len(order))
	for _, o := range order {
		pr := o.r.preps[o.h]
		payload, slot, err := c.chunkPayload(b, pr)
		if err != nil {
			return pl, err
		}
		off, n := b.add(pack.TypeChunk, 0, payload, o.h, 0)
		pl.chunks = append(pl.chunks, placedChunk{p: pr, off: off, n: n, slot: slot})
		pl.bytes[o.r] += n
	}
	return pl, nil
}

// refuseStale finishes the batches tx cannot commit: a point that is no
// longer pending (aborted meanwhile) fails its writer; deduped chunks that
// GC deleted since the lookup go back to their writer to store.
func (c *core) refuseStale(ctx context.Context, tx *sql.Tx, reqs []*writeReq) (bool, error) {
	chk, err := tx.PrepareContext(ctx, `SELECT 1 FROM chunks WHERE id=?`)
	if err != nil {
		return false, err
	}
	defer chk.Close()
	pending := map[int64]error{}
	refused := false
	for _, r := range reqs {
		perr, seen := pending[r.pointID]
		if !seen {
			var state string
			err := tx.QueryRowContext(ctx, `SELECT state FROM points WHERE id=?`, r.pointID).Scan(&state)
			switch {
			case err != nil && !errors.Is(err, sql.ErrNoRows):
				return false, err
			case err != nil || state != "pending":
				perr = fmt.Errorf("%w: point %d is no longer pending", ErrNotFound, r.pointID)
			}
			pending[r.pointID] = perr
		}
		if perr != nil {
			r.finish(nil, perr)
			refused = true
			continue
		}
		var missing []Hash
		for h, id := range r.have {
			if _, ok := c.recent.chunk(id); ok {
				continue
			}
			var one int
			if err := chk.QueryRowContext(ctx, id).Scan(&one); errors.Is(err, sql.ErrNoRows) {
				missing = append(missing, h)
			} else if err != nil {
				return false, err
			}
		}
		if len(missing) > 0 {
			r.finish(missing, nil)
			refused = true
		}
	}
	return refused, nil
}

// insertChunks indexes the appended chunks and returns their ids. A new
// chunk gets a row in the recent level, under the next chunk id (delta
// carries it, and the rows, to the level's mirror once tx commits). A
// chunk that has a row already keeps its id, and the row is rewritten:
// a chunk marked damaged stored again (every row that reads it reads the
// new copy, and the mark goes), or a whole chunk taking the row of a patch
// record with its hash (the patch's readers then read checked bytes);
// settlePatches made sure no patch record meets an existing row.
func (c *core) insertChunks(ctx context.Context, tx *sql.Tx, packID int64, pl placement, delta *recentDelta) (map[Hash]int64, error) {
	ids := make(map[Hash]int64, len(pl.chunks))
	if len(pl.chunks) == 0 {
		return ids, nil
	}
	const cols = `pack_id=?, offset=?, length=?, plain_len=?, codec=?, key_slot=?, base_id=?, depth=? WHERE id=?`
	ins, err := tx.PrepareContext(ctx, `INSERT INTO recent_chunks(id, hash, pack_id, offset, length, plain_len, codec, key_slot, base_id, depth)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return nil, err
	}
	defer ins.Close()
	updRecent, err := tx.PrepareContext(ctx, `UPDATE recent_chunks SET `+cols)
	if err != nil {
		return nil, err
	}
	defer updRecent.Close()
	updMain, err := tx.PrepareContext(ctx, `UPDATE chunks SET `+cols)
	if err != nil {
		return nil, err
	}
	defer updMain.Close()
	find, err := tx.PrepareContext(ctx, `SELECT id FROM chunks WHERE hash=?`)
	if err != nil {
		return nil, err
	}
	defer find.Close()
	var anyDamaged bool
	if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM damaged_chunks)`).Scan(&anyDamaged); err != nil {
		return nil, err
	}
	heal, err := tx.PrepareContext(ctx, `DELETE FROM damaged_chunks WHERE chunk_id=?`)
	if err != nil {
		return nil, err
	}
	defer heal.Close()
	for _, x := range pl.chunks {
		row := chunkRow{hash: x.p.hash, pack: uint64(packID), off: x.off, length: x.n, plainLen: x.p.plainLen, codec: x.p.codec, slot: x.slot}
		var base any
		if pp := x.p.patch; pp != nil {
			row.patch, row.base, row.depth = true, pp.base, pp.depth
			base = pp.base
		}
		vals := []any{packID, x.off, x.n, x.p.plainLen, x.p.codec, x.slot, base, row.depth}
		if old, ok := c.recent.chunkOf(x.p.hash); ok {
			row.id = old.id
			if _, err := updRecent.ExecContext(ctx, append(vals, row.id)...); err != nil {
				return nil, err
			}
			delta.chunks = append(delta.chunks, row)
			ids[x.p.hash] = row.id
			continue
		}
		err := find.QueryRowContext(ctx, x.p.hash[:]).Scan(&row.id)
		switch {
		case err == nil:
			if _, err := updMain.ExecContext(ctx, append(vals, row.id)...); err != nil {
				return nil, err
			}
			if anyDamaged {
				if _, err := heal.ExecContext(ctx, row.id); err != nil {
					return nil, err
				}
			}
		case errors.Is(err, sql.ErrNoRows):
			row.id = delta.nextID
			delta.nextID++
			if _, err := ins.ExecContext(ctx, append([]any{row.id, x.p.hash[:]}, vals...)...); err != nil {
				return nil, err
			}
			delta.chunks = append(delta.chunks, row)
		default:
			return nil, err
		}
		ids[x.p.hash] = row.id
	}
	return ids, nil
}
