package catalog

import (
	"context"
	"database/sql"
)

// PointNote is one row of point_notes: how a recovery point's view was
// made and, for an inconsistent point, why it is inconsistent.
type PointNote struct {
	PointID int64
	Machine string
	Method  string
	Reason  string
}

// RecordPointNote stores a point's note (replacing one recorded before).
func (c *Catalog) RecordPointNote(ctx context.Context, n PointNote) error {
	_, err := c.db.ExecContext(ctx, `INSERT INTO point_notes(point_id, machine, method, reason) VALUES(?,?,?,?)
		ON CONFLICT(point_id) DO UPDATE SET machine=excluded.machine, method=excluded.method, reason=excluded.reason`,
		n.PointID, n.Machine, n.Method, n.Reason)
	return err
}

// PointNotes returns a machine's point notes by point id (a point without
// a note has no entry).
func (c *Catalog) PointNotes(ctx context.Context, machine string) (map[int64]PointNote, error) {
	return scanPointNotes(c.db.QueryContext(ctx, `SELECT point_id, machine, method, reason FROM point_notes WHERE machine=?`, machine))
}

// DeletePointNotes removes a machine's point notes (its points were
// deleted).
func (c *Catalog) DeletePointNotes(ctx context.Context, machine string) error {
	_, err := c.db.ExecContext(ctx, `DELETE FROM point_notes WHERE machine=?`, machine)
	return err
}

func scanPointNotes(rows *sql.Rows, err error) (map[int64]PointNote, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[int64]PointNote{}
	for rows.Next() {
		var n PointNote
		if err := rows.Scan(&n.PointID, &n.Machine, &n.Method, &n.Reason); err != nil {
			return nil, err
		}
		out[n.PointID] = n
	}
	return out, rows.Err()
}
