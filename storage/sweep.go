package storage

import (
	"context"
	"database/sql"
	"errors"
	"sort"
)

// sweepDisk removes, on one disk, every row that no retained point reads
// and that is not its block's newest row: keep (b, s) iff it is b's head
// row or a committed point of the machine lies in [s, next seq of b). It
// works in bounded transactions and returns the number of rows removed.
func sweepDisk(ctx context.Context, db *sql.DB, lock func() (func(), error), diskID int64, machine string, orphan bool) (int64, error) {
	var removed int64
	after := int64(-1)
	for {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		unlock, err := lock()
		if err != nil {
			return removed, err
		}
		n, last, done, err := sweepStep(ctx, db, diskID, machine, orphan, after)
		unlock()
		removed += n
		if err != nil || done {
			return removed, err
		}
		after = last
	}
}

func sweepStep(ctx context.Context, db *sql.DB, diskID int64, machine string, orphan bool, after int64) (removed, last int64, done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, false, err
	}
	defer tx.Rollback()
	var edge sql.NullInt64
	err = tx.QueryRowContext(ctx, `SELECT block FROM changes WHERE disk_id=? AND block>? ORDER BY block LIMIT 1 OFFSET ?`,
		diskID, after, deleteBatchRows).Scan(&edge)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, 0, false, err
	}
	if orphan {
		// The disk's machine was deleted: every row goes.
		q, args := `DELETE FROM changes WHERE disk_id=? AND block>?`, []any{diskID, after}
		if edge.Valid {
			q += ` AND block<=?`
			args = append(args, edge.Int64)
		}
		res, err := tx.ExecContext(ctx, q, args...)
		if err != nil {
			return 0, 0, false, err
		}
		removed, _ = res.RowsAffected()
		return removed, edge.Int64, !edge.Valid, tx.Commit()
	}
	// The retained set is read in the same transaction as the rows it
	// judges: a point committed between steps must be seen (a row before
	// a newer pending row may be exactly what it reads).
	retained, err := retainedIDs(ctx, tx, machine)
	if err != nil {
		return 0, 0, false, err
	}
	q, args := `SELECT block, seq FROM changes WHERE disk_id=? AND block>?`, []any{diskID, after}
	if edge.Valid {
		q += ` AND block<=?`
		args = append(args, edge.Int64)
	}
	rows, err := tx.QueryContext(ctx, q+` ORDER BY block, seq`, args...)
	if err != nil {
		return 0, 0, false, err
	}
	type bs struct{ block, seq int64 }
	var all []bs
	for rows.Next() {
		var r bs
		if err := rows.Scan(&r.block, &r.seq); err != nil {
			rows.Close()
			return 0, 0, false, err
		}
		all = append(all, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, 0, false, err
	}
	del, err := tx.PrepareContext(ctx, `DELETE FROM changes WHERE disk_id=? AND block=? AND seq=?`)
	if err != nil {
		return 0, 0, false, err
	}
	defer del.Close()
	for i, r := range all {
		if i+1 == len(all) || all[i+1].block != r.block {
			continue // head row of its block
		}
		if retainedIn(retained, r.seq, all[i+1].seq) {
			continue
		}
		if _, err := del.ExecContext(ctx, diskID, r.block, r.seq); err != nil {
			return 0, 0, false, err
		}
		removed++
	}
	return removed, edge.Int64, !edge.Valid, tx.Commit()
}

// retainedIDs returns the machine's committed point ids, ascending.
func retainedIDs(ctx context.Context, tx *sql.Tx, machine string) ([]int64, error) {
	return column[int64](tx.QueryContext(ctx, `SELECT id FROM points WHERE machine=? AND state='committed' ORDER BY id`, machine))
}

// retainedIn reports whether a retained id lies in [lo, hi).
func retainedIn(ids []int64, lo, hi int64) bool {
	i := sort.Search(len(ids), func(i int) bool { return ids[i] >= lo })
	return i < len(ids) && ids[i] < hi
}

// sweepAll sweeps every disk, including rows of disks whose machine was
// deleted.
func sweepAll(ctx context.Context, db *sql.DB, lock func() (func(), error)) (int64, error) {
	type disk struct {
		id      int64
		machine string
		orphan  bool
	}
	var disks []disk
	unlock, err := lock()
	if err != nil {
		return 0, err
	}
	rows, err := db.QueryContext(ctx, `SELECT id, machine FROM disks ORDER BY id`)
	if err != nil {
		unlock()
		return 0, err
	}
	known := map[int64]bool{}
	for rows.Next() {
		var d disk
		if err := rows.Scan(&d.id, &d.machine); err != nil {
			rows.Close()
			unlock()
			return 0, err
		}
		known[d.id] = true
		disks = append(disks, d)
	}
	rows.Close()
	unlock()
	// Disk ids with rows but no disks row (their machine was deleted),
	// found by skipping along the primary key: O(disks · log n).
	after := int64(-1 << 62)
	for {
		var id int64
		unlock, err := lock()
		if err != nil {
			return 0, err
		}
		err = db.QueryRowContext(ctx, `SELECT disk_id FROM changes WHERE disk_id>? ORDER BY disk_id LIMIT 1`, after).Scan(&id)
		unlock()
		if errors.Is(err, sql.ErrNoRows) {
			break
		}
		if err != nil {
			return 0, err
		}
		if !known[id] {
			disks = append(disks, disk{id: id, orphan: true})
		}
		after = id
	}
	var total int64
	for _, d := range disks {
		n, err := sweepDisk(ctx, db, lock, d.id, d.machine, d.orphan)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
