package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ferrydr/ferry/controller/api"
)

// AddTarget records a recovery-site target.
func (c *Catalog) AddTarget(ctx context.Context, agentID string, t api.Target) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	_, err = c.db.ExecContext(ctx, `INSERT INTO targets (name, agent_id, spec, created_ns) VALUES (?,?,?,?)`, t.Name, agentID, string(b), ns(c.now()))
	if isUnique(err) {
		return fmt.Errorf("target %q: %w", t.Name, ErrExists)
	}
	return err
}

// Target reads one target and its agent id.
func (c *Catalog) Target(ctx context.Context, name string) (api.Target, string, error) {
	var spec, agentID string
	err := c.db.QueryRowContext(ctx, `SELECT spec, agent_id FROM targets WHERE name = ?`, name).Scan(&spec, &agentID)
	if errors.Is(err, sql.ErrNoRows) {
		return api.Target{}, "", fmt.Errorf("target %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return api.Target{}, "", err
	}
	var t api.Target
	return t, agentID, json.Unmarshal([]byte(spec), &t)
}

// Targets lists targets by name.
func (c *Catalog) Targets(ctx context.Context) ([]api.Target, error) {
	return listSpecs[api.Target](ctx, c, `SELECT spec FROM targets ORDER BY name`)
}

// RemoveTarget deletes a target no machine uses.
func (c *Catalog) RemoveTarget(ctx context.Context, name string) error {
	var n int
	if err := c.db.QueryRowContext(ctx, `SELECT count(*) FROM machines WHERE target = ?`, name).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("target %q is the default target of %d machine(s): %w", name, n, ErrExists)
	}
	res, err := c.db.ExecContext(ctx, `DELETE FROM targets WHERE name = ?`, name)
	if err != nil {
		return err
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return fmt.Errorf("target %q: %w", name, ErrNotFound)
	}
	return nil
}
