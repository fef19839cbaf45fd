package storage

import (
	"context"
	"database/sql"
	"time"
)

// A fold in two steps (docs/storage-format.md "Recent level").
//
// A fold holds writeMu for as long as its transaction takes: 262,000 rows
// took 1.5–2.9 s on the bench's machine, and every write of a cycle that
// came meanwhile waited, so that cycle's point landed that much later (the
// WAN RPO case's p99 went from 3.3 to 6.8 s). A fold round therefore moves
// the level in two transactions: first every chunk row, then, after a
// pause of twice the first step's length in which writers take writeMu,
// the change rows that were in the level when the round started.
//
// Each step deletes what it moved from the level's tables without
// rewriting what stays: the first empties recent_chunks whole, the second
// deletes a prefix of recent_changes by rowid. A step that deleted rows by
// a key range touched every page of a level table, and a round of 8 such
// steps made the controller write 1.48 instead of 1.16 bytes per byte
// churned (docs/benchmarks.md, "A whole fold stalls the cycle it falls
// in"). Nor does the second step move the chunk rows that came during the
// pause: they stay for the next fold, where they would have cost another
// pass over the hash index's pages now (1.23 bytes per byte churned).
//
// What readers rely on holds after each step:
//   - a step commits its rows into the main tables before it removes them
//     from the level (tables, then mirror);
//   - a change row in the main tables names a chunk in the main tables
//     (queries join the two): the rows the second step moves were written
//     before the round started, so their chunks were moved by the first;
//   - for one block, the level's rows are newer than the main tables'
//     (or the same row): the second step moves a block's older rows and
//     leaves its later ones, and a later row of the same (disk, block,
//     seq) in the level wins over the earlier one now in changes, as it
//     did over the row it replaced.
// Between the steps a change row of the level names a chunk of the main
// tables, as a row naming an older chunk always could; every lookup of a
// chunk by id or hash consults the level, then the main tables.
//
// The round lives in memory only: after a crash between the steps, Open
// finds the change rows in the level and their chunks in the main tables,
// which is a state the level allows, and the next fold moves the rest.

// foldRound is a fold under way: its first step is done, and the second,
// which moves the change rows up to rowid upTo, is due at due.
type foldRound struct {
	upTo  int64
	due   time.Time
	start time.Time
	rows  int
}

// foldStep starts a round once the level is full or old (moving its chunk
// rows), and ends it (moving the change rows it started with) once the
// pause is over; past twice the limit the second step does not wait (the
// level's memory is bounded). Call with writeMu held.
func (c *core) foldStep(ctx context.Context) error {
	l := c.recent
	l.mu.RLock()
	n, since, lastAt := l.rows+len(l.chunks), l.since, l.lastAt
	l.mu.RUnlock()
	now := c.clock()
	if r := c.fold; r != nil {
		if now.Before(r.due) && n < 2*l.limit {
			return nil
		}
		start := time.Now()
		moved, err := c.foldChanges(ctx, r.upTo)
		if err != nil {
			return err
		}
		c.fold = nil
		l.mu.Lock()
		if l.rows+len(l.chunks) > 0 {
			l.since = r.start // what stays came during the round
		}
		l.mu.Unlock()
		c.log.Debug("index recent level folded its change rows", "rows", moved, "took", time.Since(start).Round(time.Millisecond),
			"round", c.clock().Sub(r.start).Round(time.Millisecond), "round_rows", r.rows)
		return nil
	}
	if n == 0 || (n < l.limit && now.Sub(since) < recentMaxAge) {
		return nil
	}
	start := time.Now()
	moved, err := c.foldChunks(ctx)
	if err != nil {
		return err
	}
	took := time.Since(start)
	c.fold = &foldRound{upTo: lastAt, due: c.clock().Add(2 * took), start: now, rows: n}
	c.log.Debug("index recent level folded its chunk rows", "rows", moved, "took", took.Round(time.Millisecond))
	return nil
}

// foldChunks moves every chunk row of the level into the main tables in
// one transaction, then out of the mirror: the first step of a round. It
// returns how many rows it moved.
func (c *core) foldChunks(ctx context.Context) (int, error) {
	err := c.foldTx(ctx, nil,
		`INSERT INTO chunks(`+chunkCols+`) SELECT `+chunkCols+` FROM recent_chunks ORDER BY hash`,
		`DELETE FROM recent_chunks`)
	if err != nil {
		return 0, err
	}
	return c.recent.dropChunks(), nil
}

// foldChanges moves the level's change rows up to rowid upTo into the main
// tables in one transaction, then out of the mirror: the second step of a
// round. It returns how many rows of the mirror it moved.
func (c *core) foldChanges(ctx context.Context, upTo int64) (int, error) {
	err := c.foldTx(ctx, []any{upTo},
		// The later of two rows for one key wins, as in foldLocked.
		`INSERT OR REPLACE INTO changes(disk_id, block, seq, chunk_id)
			SELECT disk_id, block, seq, chunk_id FROM recent_changes WHERE rowid <= ? ORDER BY disk_id, block, seq, rowid`,
		`DELETE FROM recent_changes WHERE rowid <= ?`)
	if err != nil {
		return 0, err
	}
	return c.recent.dropRowsUpTo(upTo), nil
}

// foldTx runs the statements of a fold or a fold step, each with args, in
// one transaction. Their sorts hold at most the level's rows (its limit):
// in memory, they write no temporary file (19 MB of one per fold of
// 131,072 rows, on disk). Other queries keep the default, whose sorts (a
// Verify's, say) are bounded by nothing.
func (c *core) foldTx(ctx context.Context, args []any, stmts ...string) error {
	if _, err := c.db.ExecContext(ctx, `PRAGMA temp_store=MEMORY`); err != nil {
		return err
	}
	defer c.db.ExecContext(context.WithoutCancel(ctx), `PRAGMA temp_store=DEFAULT`)
	return c.inTx(ctx, func(tx *sql.Tx) error {
		for _, q := range stmts {
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return err
			}
		}
		return nil
	})
}

// dropChunks removes every chunk row from the mirror, once they are in
// the main tables, and returns how many there were; the change rows stay.
func (l *recentLevel) dropChunks() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.chunks)
	l.chunks = map[int64]chunkRow{}
	l.byHash = map[Hash]int64{}
	l.packs = map[uint64]int{}
	if l.rows == 0 {
		l.since = time.Time{}
	}
	return n
}

// dropRowsUpTo removes the change rows with rowid up to upTo from the
// mirror, once they are in the main tables, and returns how many there
// were. A row that replaced one of them in the mirror has a later rowid,
// and stays.
func (l *recentLevel) dropRowsUpTo(upTo int64) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for k, rs := range l.blocks {
		kept := rs[:0]
		for _, r := range rs {
			if r.at > upTo {
				kept = append(kept, r)
				continue
			}
			l.unown(r.chunk, k.disk)
			n++
		}
		if len(kept) == 0 {
			delete(l.blocks, k)
		} else {
			l.blocks[k] = kept
		}
	}
	l.rows -= n
	for ps, blocks := range l.points {
		kept := blocks[:0]
		for _, b := range blocks {
			if l.hasRow(diskBlock{ps.disk, b}, ps.seq) {
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
	return n
}

// hasRow reports whether the mirror holds a row of block k with seq. Call
// with mu held.
func (l *recentLevel) hasRow(k diskBlock, seq int64) bool {
	for _, r := range l.blocks[k] {
		if r.seq == seq {
			return true
		}
	}
	return false
}
