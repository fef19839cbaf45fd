package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ferrydr/ferry/controller/api"
)

// PutPlan creates (create=true; ErrExists if present) or replaces a plan.
func (c *Catalog) PutPlan(ctx context.Context, p api.Plan, create bool) error {
	for i := range p.Groups {
		p.Groups[i].Number = i + 1
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if create {
		_, err = c.db.ExecContext(ctx, `INSERT INTO plans (name, spec) VALUES (?, ?)`, p.Name, string(b))
		if isUnique(err) {
			return fmt.Errorf("plan %q: %w", p.Name, ErrExists)
		}
		return err
	}
	res, err := c.db.ExecContext(ctx, `UPDATE plans SET spec = ? WHERE name = ?`, string(b), p.Name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("plan %q: %w", p.Name, ErrNotFound)
	}
	return nil
}

// Plan reads one plan.
func (c *Catalog) Plan(ctx context.Context, name string) (api.Plan, error) {
	var spec string
	err := c.db.QueryRowContext(ctx, `SELECT spec FROM plans WHERE name = ?`, name).Scan(&spec)
	if errors.Is(err, sql.ErrNoRows) {
		return api.Plan{}, fmt.Errorf("plan %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return api.Plan{}, err
	}
	var p api.Plan
	return p, json.Unmarshal([]byte(spec), &p)
}

// Plans lists every plan by name.
func (c *Catalog) Plans(ctx context.Context) ([]api.Plan, error) {
	return listSpecs[api.Plan](ctx, c, `SELECT spec FROM plans ORDER BY name`)
}

// DeletePlan removes a plan (its machines stay protected).
func (c *Catalog) DeletePlan(ctx context.Context, name string) error {
	res, err := c.db.ExecContext(ctx, `DELETE FROM plans WHERE name = ?`, name)
	if err != nil {
		return err
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return fmt.Errorf("plan %q: %w", name, ErrNotFound)
	}
	return nil
}
