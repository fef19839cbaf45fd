package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ferrydr/ferry/controller/api"
)

// DefaultPolicyName is the policy machines get when none is named; it is
// created on first start.
const DefaultPolicyName = "default"

// EnsureDefaultPolicy creates the default policy if it does not exist.
func (c *Catalog) EnsureDefaultPolicy(ctx context.Context) error {
	_, err := c.Policy(ctx, DefaultPolicyName)
	if errors.Is(err, ErrNotFound) {
		return c.PutPolicy(ctx, api.DefaultPolicy(DefaultPolicyName), true)
	}
	return err
}

// PutPolicy creates (create=true; ErrExists if present) or replaces a policy.
func (c *Catalog) PutPolicy(ctx context.Context, p api.Policy, create bool) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if create {
		_, err = c.db.ExecContext(ctx, `INSERT INTO policies (name, spec) VALUES (?, ?)`, p.Name, string(b))
		if isUnique(err) {
			return fmt.Errorf("policy %q: %w", p.Name, ErrExists)
		}
		return err
	}
	res, err := c.db.ExecContext(ctx, `UPDATE policies SET spec = ? WHERE name = ?`, string(b), p.Name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("policy %q: %w", p.Name, ErrNotFound)
	}
	return nil
}

// Policy reads one policy.
func (c *Catalog) Policy(ctx context.Context, name string) (api.Policy, error) {
	var spec string
	err := c.db.QueryRowContext(ctx, `SELECT spec FROM policies WHERE name = ?`, name).Scan(&spec)
	if errors.Is(err, sql.ErrNoRows) {
		return api.Policy{}, fmt.Errorf("policy %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return api.Policy{}, err
	}
	var p api.Policy
	return p, json.Unmarshal([]byte(spec), &p)
}

// Policies lists every policy by name.
func (c *Catalog) Policies(ctx context.Context) ([]api.Policy, error) {
	return listSpecs[api.Policy](ctx, c, `SELECT spec FROM policies ORDER BY name`)
}

// listSpecs decodes the JSON spec column of each row a query returns.
func listSpecs[T any](ctx context.Context, c *Catalog, query string) ([]T, error) {
	rows, err := c.db.QueryContext(ctx, query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		var spec string
		var v T
		if err := rows.Scan(&spec); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(spec), &v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// DeletePolicy removes a policy no machine uses.
func (c *Catalog) DeletePolicy(ctx context.Context, name string) error {
	var n int
	if err := c.db.QueryRowContext(ctx, `SELECT count(*) FROM machines WHERE policy = ?`, name).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("policy %q is used by %d machine(s): %w", name, n, ErrExists)
	}
	res, err := c.db.ExecContext(ctx, `DELETE FROM policies WHERE name = ?`, name)
	if err != nil {
		return err
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return fmt.Errorf("policy %q: %w", name, ErrNotFound)
	}
	return nil
}
