package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"

	"github.com/ferrydr/ferry/controller/api"
)

var drillTable = specTable{table: "drills", noun: "drill"}

// PutDrill creates (create=true; ErrExists if present) or replaces a
// drill. What the controller fills in (last run, next run) is not stored.
func (c *Catalog) PutDrill(ctx context.Context, d api.Drill, create bool) error {
	d.LastRun, d.NextRun, d.Running = nil, nil, false
	return drillTable.put(ctx, c, d.Name, d, create)
}

// Drill reads one drill.
func (c *Catalog) Drill(ctx context.Context, name string) (api.Drill, error) {
	var d api.Drill
	err := drillTable.get(ctx, c, name, &d)
	return d, err
}

// Drills lists every drill by name.
func (c *Catalog) Drills(ctx context.Context) ([]api.Drill, error) {
	return listSpecs[api.Drill](ctx, c, `SELECT spec FROM drills ORDER BY name`)
}

// DeleteDrill removes a drill and the reports of its runs that did not
// pass: a passed run is the proof its point booted, and the point stays
// verified.
func (c *Catalog) DeleteDrill(ctx context.Context, name string) error {
	return c.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM drills WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if k, _ := res.RowsAffected(); k == 0 {
			return fmt.Errorf("drill %q: %w", name, ErrNotFound)
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM drill_runs WHERE drill = ? AND result <> ?`, name, api.DrillPassed)
		return err
	})
}

// PutDrillRun records a run (r.ID 0: a new row, whose id it returns) or
// replaces its report.
func (c *Catalog) PutDrillRun(ctx context.Context, r api.DrillRun) (int64, error) {
	if r.ID != 0 {
		b, err := json.Marshal(r)
		if err != nil {
			return 0, err
		}
		_, err = c.db.ExecContext(ctx, `UPDATE drill_runs SET point = ?, result = ?, report = ? WHERE id = ?`, r.Point, r.Result, string(b), r.ID)
		return r.ID, err
	}
	res, err := c.db.ExecContext(ctx, `INSERT INTO drill_runs (drill, machine, point, started, result, report) VALUES (?, ?, ?, ?, ?, '{}')`,
		r.Drill, r.Machine, r.Point, ns(r.Started), r.Result)
	if err != nil {
		return 0, err
	}
	r.ID, err = res.LastInsertId()
	if err != nil {
		return 0, err
	}
	return c.PutDrillRun(ctx, r)
}

// DrillRuns lists a drill's newest runs, newest first (limit <= 0: all).
func (c *Catalog) DrillRuns(ctx context.Context, drill string, limit int) ([]api.DrillRun, error) {
	if limit <= 0 {
		limit = -1
	}
	return listSpecs[api.DrillRun](ctx, c, `SELECT report FROM drill_runs WHERE drill = ? ORDER BY id DESC LIMIT ?`, drill, limit)
}

// MachineDrillRuns lists a machine's newest runs of any drill, newest first.
func (c *Catalog) MachineDrillRuns(ctx context.Context, machine string, limit int) ([]api.DrillRun, error) {
	if limit <= 0 {
		limit = -1
	}
	return listSpecs[api.DrillRun](ctx, c, `SELECT report FROM drill_runs WHERE machine = ? ORDER BY id DESC LIMIT ?`, machine, limit)
}

// VerifiedPoints returns the ids of a machine's points a drill run passed on.
func (c *Catalog) VerifiedPoints(ctx context.Context, machine string) (map[int64]bool, error) {
	ids, err := c.db.QueryContext(ctx, `SELECT DISTINCT point FROM drill_runs WHERE machine = ? AND result = ? AND point > 0`, machine, api.DrillPassed)
	if err != nil {
		return nil, err
	}
	defer ids.Close()
	out := map[int64]bool{}
	for ids.Next() {
		var id int64
		if err := ids.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = true
	}
	return out, ids.Err()
}

// AbandonDrillRuns marks runs a controller restart interrupted as failed:
// whatever they started was cleaned up by their jobs or is left to cleanup.
func (c *Catalog) AbandonDrillRuns(ctx context.Context) error {
	rs, err := listSpecs[api.DrillRun](ctx, c, `SELECT report FROM drill_runs WHERE result = 'running'`)
	if err != nil {
		return err
	}
	for _, r := range rs {
		r.Result, r.Error = api.DrillFailed, "the controller stopped during the drill"
		if _, err := c.PutDrillRun(ctx, r); err != nil {
			return err
		}
	}
	return nil
}
