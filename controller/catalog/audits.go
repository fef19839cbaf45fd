package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

// PointAudit is one row of point_audits: when a point was last re-read
// whole by the point audit and what that pass found in it.
type PointAudit struct {
	PointID int64
	Machine string
	Audited time.Time
	Damage  []api.PointDamage
}

// RecordAudits stores a pass's results, one row per point (replacing the
// point's previous row), and drops the rows of machine's points that are
// no longer retained (keep lists the retained ids per machine; a machine
// absent from keep is left alone).
func (c *Catalog) RecordAudits(ctx context.Context, rows []PointAudit, keep map[string][]int64) error {
	return c.inTx(ctx, func(tx *sql.Tx) error {
		for _, r := range rows {
			d := r.Damage
			if d == nil {
				d = []api.PointDamage{}
			}
			b, err := json.Marshal(d)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO point_audits(point_id, machine, audited_ns, damage) VALUES(?,?,?,?)
				ON CONFLICT(point_id) DO UPDATE SET machine=excluded.machine, audited_ns=excluded.audited_ns, damage=excluded.damage`,
				r.PointID, r.Machine, ns(r.Audited), string(b)); err != nil {
				return err
			}
		}
		for m, ids := range keep {
			ks := map[int64]bool{}
			for _, id := range ids {
				ks[id] = true
			}
			have, err := pointIDs(tx.QueryContext(ctx, `SELECT point_id FROM point_audits WHERE machine=?`, m))
			if err != nil {
				return err
			}
			for _, id := range have {
				if !ks[id] {
					if _, err := tx.ExecContext(ctx, `DELETE FROM point_audits WHERE point_id=?`, id); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
}

// PointAudits returns a machine's audit rows by point id.
func (c *Catalog) PointAudits(ctx context.Context, machine string) (map[int64]PointAudit, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT point_id, audited_ns, damage FROM point_audits WHERE machine=?`, machine)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[int64]PointAudit{}
	for rows.Next() {
		var r PointAudit
		var at int64
		var dmg string
		if err := rows.Scan(&r.PointID, &at, &dmg); err != nil {
			return nil, err
		}
		r.Machine, r.Audited = machine, fromNS(at)
		if err := json.Unmarshal([]byte(dmg), &r.Damage); err != nil {
			return nil, err
		}
		out[r.PointID] = r
	}
	return out, rows.Err()
}

func pointIDs(rows *sql.Rows, err error) ([]int64, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}
