package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/storage/internal/pack"
)

const pointCols = `id, machine, instant_ns, consistency, name, bytes, changed, committed_ns`

func scanPoint(sc interface{ Scan(...any) error }) (Point, error) {
	var p Point
	var inst, comm int64
	var cons string
	err := sc.Scan(&p.ID, &p.Machine, &inst, &cons, &p.Name, &p.Bytes, &p.Changed, &comm)
	p.Instant = time.Unix(0, inst)
	p.Committed = time.Unix(0, comm)
	p.Consistency = Consistency(cons)
	return p, err
}

// Points lists a machine's committed points, oldest first.
func (r *Repo) Points(ctx context.Context, machine string) ([]Point, error) {
	c := r.c
	if err := c.check(); err != nil {
		return nil, err
	}
	rows, err := c.db.QueryContext(ctx, `SELECT `+pointCols+` FROM points WHERE machine=? AND state='committed' ORDER BY id`, machine)
	if err != nil {
		return nil, err
	}
	var pts []Point
	idx := map[int64]int{}
	for rows.Next() {
		p, err := scanPoint(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		idx[p.ID] = len(pts)
		pts = append(pts, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	dmg, err := c.damagedPoints(ctx, machine)
	if err != nil {
		return nil, err
	}
	for id := range dmg {
		if i, ok := idx[id]; ok {
			pts[i].Damaged = true
		}
	}
	drows, err := c.db.QueryContext(ctx, `SELECT pd.point_id, d.name, pd.size, d.block_size FROM point_disks pd
		JOIN disks d ON d.id = pd.disk_id JOIN points p ON p.id = pd.point_id
		WHERE p.machine=? AND p.state='committed' ORDER BY pd.point_id, d.name`, machine)
	if err != nil {
		return nil, err
	}
	defer drows.Close()
	for drows.Next() {
		var id int64
		var d DiskSpec
		if err := drows.Scan(&id, &d.Name, &d.Size, &d.BlockSize); err != nil {
			return nil, err
		}
		if i, ok := idx[id]; ok {
			pts[i].Disks = append(pts[i].Disks, d)
		}
	}
	return pts, drows.Err()
}

// Point returns one committed point.
func (r *Repo) Point(ctx context.Context, id int64) (Point, error) {
	c := r.c
	if err := c.check(); err != nil {
		return Point{}, err
	}
	p, err := scanPoint(c.db.QueryRowContext(ctx, `SELECT `+pointCols+` FROM points WHERE id=? AND state='committed'`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return p, fmt.Errorf("%w: point %d", ErrNotFound, id)
	}
	if err != nil {
		return p, err
	}
	p.Disks, _, err = c.pointDisks(ctx, id)
	return p, err
}

// PointAt returns the machine's newest committed point whose instant is at
// or before t.
func (r *Repo) PointAt(ctx context.Context, machine string, t time.Time) (Point, error) {
	c := r.c
	if err := c.check(); err != nil {
		return Point{}, err
	}
	var id int64
	err := c.db.QueryRowContext(ctx, `SELECT id FROM points WHERE machine=? AND state='committed' AND instant_ns<=?
		ORDER BY instant_ns DESC, id DESC LIMIT 1`, machine, t.UnixNano()).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return Point{}, fmt.Errorf("%w: no point of %q at or before %s", ErrNotFound, machine, t.Format(time.RFC3339Nano))
	}
	if err != nil {
		return Point{}, err
	}
	return r.Point(ctx, id)
}

// Machines lists the machines that have points or a pending point.
func (r *Repo) Machines(ctx context.Context) ([]string, error) {
	if err := r.c.check(); err != nil {
		return nil, err
	}
	return column[string](r.c.db.QueryContext(ctx, `SELECT DISTINCT machine FROM points WHERE state IN ('committed', 'pending') ORDER BY machine`))
}

// LabelPoint sets a committed point's name (empty clears it).
func (r *Repo) LabelPoint(ctx context.Context, id int64, name string) error {
	c := r.c
	if err := c.check(); err != nil {
		return err
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("storage: point name of %d bytes over %d", len(name), maxNameLen)
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	var serial uint32
	err := c.db.QueryRowContext(ctx, `SELECT label_serial FROM points WHERE id=? AND state='committed'`, id).Scan(&serial)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: point %d", ErrNotFound, id)
	}
	if err != nil {
		return err
	}
	serial++
	b, err := c.newBatch(ctx)
	if err != nil {
		return err
	}
	b.add(pack.TypePointLabel, 0, pack.EncodeLabel(pack.Label{PointID: uint64(id), Serial: serial, Name: name}), Hash{}, id)
	if err := c.flush(b); err != nil {
		return err
	}
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `UPDATE points SET name=?, label_serial=? WHERE id=?`, name, serial, id); err != nil {
		return err
	}
	if err := c.indexBatch(ctx, tx, b); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	c.finish(ctx, b)
	return nil
}

// DeletePoint deletes a committed point in O(its changes + the changes of
// the next retained point); reads of every other point are unchanged.
func (r *Repo) DeletePoint(ctx context.Context, id int64) error {
	if err := r.c.check(); err != nil {
		return err
	}
	return r.c.deletePoint(ctx, id)
}

// Prune deletes the machine's committed points whose instant is before
// olderThan, oldest first, never the newest point. It returns how many.
func (r *Repo) Prune(ctx context.Context, machine string, olderThan time.Time) (int, error) {
	return r.PruneExcept(ctx, machine, olderThan, 0)
}

// PruneExcept is Prune that also keeps the point keep (0: none), e.g. the
// newest point a boot drill verified.
func (r *Repo) PruneExcept(ctx context.Context, machine string, olderThan time.Time, keep int64) (int, error) {
	c := r.c
	if err := c.check(); err != nil {
		return 0, err
	}
	ids, err := column[int64](c.db.QueryContext(ctx, `SELECT id FROM points WHERE machine=? AND state='committed' AND instant_ns<?
		AND id < (SELECT max(id) FROM points WHERE machine=? AND state='committed') AND id <> ? ORDER BY id`,
		machine, olderThan.UnixNano(), machine, keep))
	if err != nil {
		return 0, err
	}
	for i, id := range ids {
		if i > 0 {
			c.fail(FailPruneMid)
		}
		if err := ctx.Err(); err != nil {
			return i, err
		}
		if err := c.deletePoint(ctx, id); err != nil {
			return i, err
		}
	}
	return len(ids), nil
}

// recordDeletion makes a point-delete record durable (so Rebuild cannot
// resurrect what it deletes), then in one index transaction runs update
// and indexes the record. Call with writeMu held.
func (c *core) recordDeletion(ctx context.Context, del pack.Delete, flags uint8, update func(*sql.Tx) error) error {
	b, err := c.newBatch(ctx)
	if err != nil {
		return err
	}
	b.add(pack.TypePointDelete, flags, pack.EncodeDelete(del), Hash{}, int64(del.PointID))
	if err := c.flush(b); err != nil {
		return err
	}
	err = c.inTx(ctx, func(tx *sql.Tx) error {
		if err := update(tx); err != nil {
			return err
		}
		return c.indexBatch(ctx, tx, b)
	})
	if err == nil {
		c.finish(ctx, b)
	}
	return err
}

// deleteBatchRows bounds one index transaction of a deletion, so that
// writers never wait long behind a large delete.
const deleteBatchRows = 8192

func (c *core) deletePoint(ctx context.Context, t int64) error {
	c.writeMu.Lock()
	var machine, state string
	err := c.db.QueryRowContext(ctx, `SELECT machine, state FROM points WHERE id=?`, t).Scan(&machine, &state)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && state != "committed") {
		c.writeMu.Unlock()
		return fmt.Errorf("%w: point %d", ErrNotFound, t)
	}
	if err != nil {
		c.writeMu.Unlock()
		return err
	}
	err = c.recordDeletion(ctx, pack.Delete{PointID: uint64(t), Machine: machine, DeletedNs: c.clock().UnixNano()}, 0, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE points SET state='deleted' WHERE id=?`, t)
		return err
	})
	c.writeMu.Unlock()
	if err != nil {
		return err
	}
	// The point is deleted now; what follows only removes rows no retained
	// point reads. It runs in bounded transactions; a crash in between
	// leaves rows that GC's sweep removes.
	disks, err := c.machineDisks(ctx, machine)
	if err != nil {
		return err
	}
	for _, d := range disks {
		if err := c.dropRowsOf(ctx, machine, d, t); err != nil {
			return err
		}
	}
	return nil
}

func (c *core) machineDisks(ctx context.Context, machine string) ([]int64, error) {
	return column[int64](c.db.QueryContext(ctx, `SELECT id FROM disks WHERE machine=? ORDER BY id`, machine))
}

func (c *core) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// neighbours returns P, the newest retained point before t, and X, the
// oldest retained point after t or else the machine's pending point (0 if
// none).
func neighbours(ctx context.Context, tx *sql.Tx, machine string, t int64) (p, x int64, err error) {
	var np, nx sql.NullInt64
	if err = tx.QueryRowContext(ctx, `SELECT max(id) FROM points WHERE machine=? AND state='committed' AND id<?`, machine, t).Scan(&np); err != nil {
		return
	}
	if err = tx.QueryRowContext(ctx, `SELECT min(id) FROM points WHERE machine=? AND state='committed' AND id>?`, machine, t).Scan(&nx); err != nil {
		return
	}
	if !nx.Valid {
		err = tx.QueryRowContext(ctx, `SELECT max(id) FROM points WHERE machine=? AND state='pending'`, machine).Scan(&nx)
	}
	return np.Int64, nx.Int64, err
}

// dropRowsOf removes, on one disk, the rows that deleting point t made
// unreadable (docs/storage-format.md "Deleting a point"):
//   - a row (b,t) is kept iff it is b's newest row or the next retained
//     point Q reads it (Q < the next row of b); if kept, the row before it
//     is dropped unless the previous retained point P reads it;
//   - for each row (c,X) of X (Q, or the pending point when t was newest),
//     the row before it is dropped unless P reads it.
func (c *core) dropRowsOf(ctx context.Context, machine string, disk, t int64) error {
	for _, owner := range []string{"t", "x"} {
		after := int64(-1)
		for {
			done, last, err := c.dropStep(ctx, machine, disk, t, owner, after)
			if err != nil {
				return err
			}
			if done {
				break
			}
			after = last
		}
	}
	return nil
}

// dropStep processes up to deleteBatchRows rows of t (owner "t") or of X
// (owner "x") with block > after, in one transaction.
func (c *core) dropStep(ctx context.Context, machine string, disk, t int64, owner string, after int64) (done bool, last int64, err error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	// The step reads the rows of t and of the point after it (X), and the
	// rows around them: fold the recent level first if it holds rows of
	// this disk up to X (a point deleted within minutes of its commit).
	// Rows after X cannot change what the step does with those.
	var x int64
	if err := c.db.QueryRowContext(ctx, `SELECT coalesce(
		(SELECT min(id) FROM points WHERE machine=?1 AND state='committed' AND id>?2),
		(SELECT max(id) FROM points WHERE machine=?1 AND state='pending'), 0)`, machine, t).Scan(&x); err != nil {
		return false, -1, err
	}
	if c.recent.rowsUpTo(disk, max(t, x)) {
		if err := c.foldLocked(ctx); err != nil {
			return false, -1, err
		}
	}
	last = -1
	err = c.inTx(ctx, func(tx *sql.Tx) error {
		P, X, err := neighbours(ctx, tx, machine, t)
		if err != nil {
			return err
		}
		var Q int64
		var state string
		if X != 0 {
			if err := tx.QueryRowContext(ctx, `SELECT state FROM points WHERE id=?`, X).Scan(&state); err != nil {
				return err
			}
			if state == "committed" {
				Q = X
			}
		}
		seq := t
		if owner == "x" {
			if X == 0 {
				done = true // nothing after t: no row of X to revisit
				return nil
			}
			seq = X
		}
		rows, err := tx.QueryContext(ctx, `SELECT block FROM changes WHERE disk_id=? AND seq=? AND block>? ORDER BY block LIMIT ?`,
			disk, seq, after, deleteBatchRows)
		if err != nil {
			return err
		}
		var blocks []int64
		for rows.Next() {
			var b int64
			if err := rows.Scan(&b); err != nil {
				rows.Close()
				return err
			}
			blocks = append(blocks, b)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		nextSt, err := tx.PrepareContext(ctx, `SELECT seq FROM changes WHERE disk_id=? AND block=? AND seq>? ORDER BY seq LIMIT 1`)
		if err != nil {
			return err
		}
		defer nextSt.Close()
		prevSt, err := tx.PrepareContext(ctx, `SELECT seq FROM changes WHERE disk_id=? AND block=? AND seq<? ORDER BY seq DESC LIMIT 1`)
		if err != nil {
			return err
		}
		defer prevSt.Close()
		delSt, err := tx.PrepareContext(ctx, `DELETE FROM changes WHERE disk_id=? AND block=? AND seq=?`)
		if err != nil {
			return err
		}
		defer delSt.Close()
		lookup := func(st *sql.Stmt, b, s int64) (int64, error) {
			var v int64
			err := st.QueryRowContext(ctx, disk, b, s).Scan(&v)
			if errors.Is(err, sql.ErrNoRows) {
				return 0, nil
			}
			return v, err
		}
		// readByP: the previous retained point P reads a row at seq p0.
		readByP := func(p0 int64) bool { return P != 0 && P >= p0 }
		for _, b := range blocks {
			if owner == "t" {
				n, err := lookup(nextSt, b, t)
				if err != nil {
					return err
				}
				if n == 0 || (Q != 0 && Q < n) {
					p0, err := lookup(prevSt, b, t)
					if err != nil {
						return err
					}
					if p0 != 0 && !readByP(p0) {
						if _, err := delSt.ExecContext(ctx, disk, b, p0); err != nil {
							return err
						}
					}
				} else if _, err := delSt.ExecContext(ctx, disk, b, t); err != nil {
					return err
				}
			} else {
				p0, err := lookup(prevSt, b, X)
				if err != nil {
					return err
				}
				if p0 != 0 && p0 != t && !pointRetainedBetween(ctx, tx, machine, p0, X) {
					if _, err := delSt.ExecContext(ctx, disk, b, p0); err != nil {
						return err
					}
				}
			}
		}
		if len(blocks) < deleteBatchRows {
			done = true
		}
		if len(blocks) > 0 {
			last = blocks[len(blocks)-1]
		}
		return nil
	})
	return done, last, err
}

// pointRetainedBetween is a guard for the X pass: true if a committed point
// lies in [lo, hi). P covers it when the retained set is as expected; this
// check keeps the pass safe if a point was committed in between.
func pointRetainedBetween(ctx context.Context, tx *sql.Tx, machine string, lo, hi int64) bool {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM points WHERE machine=? AND state='committed' AND id>=? AND id<?`,
		machine, lo, hi).Scan(&n); err != nil {
		return true // when unsure, keep the row
	}
	return n > 0
}

// DiskNames lists the disks the repository holds rows of for a machine —
// any point's, pending or committed, the newest or not: a disk name listed
// here may read stored blocks through a later point that has it again.
func (r *Repo) DiskNames(ctx context.Context, machine string) ([]string, error) {
	if err := r.c.check(); err != nil {
		return nil, err
	}
	return column[string](r.c.db.QueryContext(ctx, `SELECT name FROM disks WHERE machine=? ORDER BY name`, machine))
}
