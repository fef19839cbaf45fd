package catalog

import (
	"context"
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
	return policyTable.put(ctx, c, p.Name, p, create)
}

// Policy reads one policy.
func (c *Catalog) Policy(ctx context.Context, name string) (api.Policy, error) {
	var p api.Policy
	err := policyTable.get(ctx, c, name, &p)
	return p, err
}

// Policies lists every policy by name.
func (c *Catalog) Policies(ctx context.Context) ([]api.Policy, error) {
	return listSpecs[api.Policy](ctx, c, `SELECT spec FROM policies ORDER BY name`)
}

// listSpecs decodes the JSON spec column of each row a query returns.
func listSpecs[T any](ctx context.Context, c *Catalog, query string, args ...any) ([]T, error) {
	rows, err := c.db.QueryContext(ctx, query, args...)
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
	return policyTable.delete(ctx, c, name)
}
