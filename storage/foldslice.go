package storage

import (
	"bytes"
	"context"
	"database/sql"
	"slices"
	"time"
)

// A fold in slices (docs/storage-format.md "Recent level").
//
// Folding the whole level holds writeMu for as long as the transaction
// takes: 262,000 rows took 1–3 s on the bench's machine, and every write
// of a cycle that came meanwhile waited, so that cycle's point landed
// that much later (the WAN RPO case's p99 went from 3.3 to 6.8 s). A fold
// round instead moves the level in key ranges, one range per transaction:
// first the chunk rows, by the first byte of their hash; then the change
// rows, by (disk, block) between boundaries taken from the level when the
// round starts, each such slice with every chunk row the level holds by
// then (those that came during the round: few). Rows of one range share
// the trees' pages as they did in one fold, so the pages written stay
// about the same. Between slices writers take writeMu, and a slice is
// followed by a pause of twice its length before the next, so a round
// takes at most a third of the index's time while writes keep coming.
//
// What readers rely on holds after every slice:
//   - a slice commits its rows into the main tables before it removes
//     them from the level;
//   - all rows of one (disk, block) move together, so a block's rows in
//     the level are still newer than its rows in the main tables;
//   - a change row in the main tables names a chunk in the main tables
//     (queries join the two): a change slice takes every chunk of the
//     level along.
// A change row of the level may name a chunk of the main tables, as
// before; every lookup of a chunk by id or hash consults the level, then
// the main tables.

// A round folds the chunk rows in foldChunkSlices hash ranges, then the
// change rows in foldChangeSlices key ranges.
const (
	foldChunkSlices  = 4
	foldChangeSlices = 4
	foldSlices       = foldChunkSlices + foldChangeSlices
)

// foldRound is a fold under way: the next slice, the boundaries of the
// change rows' key ranges, and when the next slice is due.
type foldRound struct {
	next   int
	bounds []diskBlock // foldChangeSlices-1 ascending boundaries
	due    time.Time
	start  time.Time
	rows   int
}

// foldStep starts a round once the level is full or old, and folds its
// next slice when it is due; past twice the limit, slices are folded
// without a pause (the level's memory is bounded). Call with writeMu held.
func (c *core) foldStep(ctx context.Context) error {
	l := c.recent
	l.mu.RLock()
	n, since := l.rows+len(l.chunks), l.since
	l.mu.RUnlock()
	now := c.clock()
	if c.fold == nil {
		if n == 0 || (n < l.limit && now.Sub(since) < recentMaxAge) {
			return nil
		}
		c.fold = &foldRound{bounds: l.changeBounds(foldChangeSlices), start: now, rows: n}
	}
	r := c.fold
	if now.Before(r.due) && n < 2*l.limit {
		return nil
	}
	start := time.Now()
	if err := c.foldSlice(ctx, r, r.next); err != nil {
		return err
	}
	took := time.Since(start)
	r.next++
	r.due = c.clock().Add(2 * took)
	if r.next == foldSlices {
		c.fold = nil
		// What is left came in while the round ran: its age counts
		// from the round's start.
		l.mu.Lock()
		if l.rows+len(l.chunks) > 0 {
			l.since = r.start
		}
		l.mu.Unlock()
		c.log.Debug("index recent level folded in slices", "rows", r.rows, "took", c.clock().Sub(r.start).Round(time.Millisecond))
	}
	return nil
}

// sliceRange is what slice i of a round moves: chunk rows whose hash's
// first byte is in [hashLo, hashHi), or every chunk row and the change
// rows whose (disk, block) is in [lo, hi); a nil bound is open.
type sliceRange struct {
	hashLo, hashHi []byte
	changes        bool
	lo, hi         *diskBlock
}

func (r *foldRound) slice(i int) sliceRange {
	var s sliceRange
	if i < foldChunkSlices {
		if i > 0 {
			s.hashLo = []byte{byte(i * 256 / foldChunkSlices)}
		}
		if i < foldChunkSlices-1 {
			s.hashHi = []byte{byte((i + 1) * 256 / foldChunkSlices)}
		}
		return s
	}
	s.changes = true
	if j := i - foldChunkSlices; j > 0 {
		s.lo = &r.bounds[j-1]
	}
	if j := i - foldChunkSlices; j < foldChangeSlices-1 {
		s.hi = &r.bounds[j]
	}
	return s
}

// where is the slice's SQL conditions on the two level tables, and their
// arguments.
func (s sliceRange) where() (chunks string, chunkArgs []any, changes string, changeArgs []any) {
	chunks, changes = "1", "0"
	if s.hashLo != nil {
		chunks += " AND hash >= ?"
		chunkArgs = append(chunkArgs, s.hashLo)
	}
	if s.hashHi != nil {
		chunks += " AND hash < ?"
		chunkArgs = append(chunkArgs, s.hashHi)
	}
	if !s.changes {
		return chunks, chunkArgs, changes, nil
	}
	changes = "1"
	if s.lo != nil {
		changes += " AND (disk_id, block) >= (?, ?)"
		changeArgs = append(changeArgs, s.lo.disk, s.lo.block)
	}
	if s.hi != nil {
		changes += " AND (disk_id, block) < (?, ?)"
		changeArgs = append(changeArgs, s.hi.disk, s.hi.block)
	}
	return chunks, chunkArgs, changes, changeArgs
}

// foldSlice moves slice i of the round into the main tables in one
// transaction, then out of the mirror.
func (c *core) foldSlice(ctx context.Context, r *foldRound, i int) error {
	s := r.slice(i)
	chunks, chunkArgs, changes, changeArgs := s.where()
	if _, err := c.db.ExecContext(ctx, `PRAGMA temp_store=MEMORY`); err != nil { // as in foldLocked
		return err
	}
	defer c.db.ExecContext(context.WithoutCancel(ctx), `PRAGMA temp_store=DEFAULT`)
	err := c.inTx(ctx, func(tx *sql.Tx) error {
		for _, q := range []struct {
			sql  string
			args []any
		}{
			{`INSERT INTO chunks(` + chunkCols + `) SELECT ` + chunkCols + ` FROM recent_chunks WHERE ` + chunks + ` ORDER BY hash`, chunkArgs},
			{`INSERT OR REPLACE INTO changes(disk_id, block, seq, chunk_id)
				SELECT disk_id, block, seq, chunk_id FROM recent_changes WHERE ` + changes + ` ORDER BY disk_id, block, seq, rowid`, changeArgs},
			{`DELETE FROM recent_chunks WHERE ` + chunks, chunkArgs},
			{`DELETE FROM recent_changes WHERE ` + changes, changeArgs},
		} {
			if _, err := tx.ExecContext(ctx, q.sql, q.args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.recent.removeSlice(s)
	return nil
}

// changeBounds returns n-1 ascending (disk, block) keys that cut the
// level's change rows into n ranges of about the same number of blocks.
func (l *recentLevel) changeBounds(n int) []diskBlock {
	l.mu.RLock()
	keys := make([]diskBlock, 0, len(l.blocks))
	for k := range l.blocks {
		keys = append(keys, k)
	}
	l.mu.RUnlock()
	slices.SortFunc(keys, compareDiskBlock)
	out := make([]diskBlock, n-1)
	for i := range out {
		if len(keys) == 0 {
			out[i] = diskBlock{} // every range but the last is empty
			continue
		}
		out[i] = keys[(i+1)*len(keys)/n]
	}
	return out
}

func compareDiskBlock(a, b diskBlock) int {
	if a.disk != b.disk {
		return cmpInt(a.disk, b.disk)
	}
	return cmpInt(a.block, b.block)
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s sliceRange) hasHash(h Hash) bool {
	return (s.hashLo == nil || bytes.Compare(h[:1], s.hashLo) >= 0) && (s.hashHi == nil || bytes.Compare(h[:1], s.hashHi) < 0)
}

func (s sliceRange) hasKey(k diskBlock) bool {
	return s.changes && (s.lo == nil || compareDiskBlock(k, *s.lo) >= 0) && (s.hi == nil || compareDiskBlock(k, *s.hi) < 0)
}

// removeSlice drops the slice's rows from the mirror, once its
// transaction has committed.
func (l *recentLevel) removeSlice(s sliceRange) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, row := range l.chunks {
		if !s.hasHash(row.hash) {
			continue
		}
		delete(l.chunks, id)
		if l.byHash[row.hash] == id {
			delete(l.byHash, row.hash)
		}
		if l.packs[row.pack]--; l.packs[row.pack] <= 0 {
			delete(l.packs, row.pack)
		}
	}
	for k, rs := range l.blocks {
		if !s.hasKey(k) {
			continue
		}
		for _, r := range rs {
			l.unown(r.chunk, k.disk)
		}
		l.rows -= len(rs)
		delete(l.blocks, k)
	}
	for ps, blocks := range l.points {
		kept := blocks[:0]
		for _, b := range blocks {
			if !s.hasKey(diskBlock{ps.disk, b}) {
				kept = append(kept, b)
			}
		}
		if len(kept) == 0 {
			delete(l.points, ps)
		} else {
			l.points[ps] = kept
		}
	}
	if l.rows+len(l.chunks) == 0 {
		l.since = time.Time{}
	}
}
