package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
)

// specTable is a table of named objects kept as JSON in a spec column
// (policies, plans): one place for their create, replace, read and delete.
type specTable struct {
	table string // SQL table name (a constant, never user input)
	noun  string // how errors name one row: "policy", "plan"
}

var (
	policyTable = specTable{table: "policies", noun: "policy"}
	planTable   = specTable{table: "plans", noun: "plan"}
)

// put creates (create=true; ErrExists if present) or replaces a row.
func (s specTable) put(ctx context.Context, c *Catalog, name string, v any, create bool) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if create {
		_, err = c.db.ExecContext(ctx, `INSERT INTO `+s.table+` (name, spec) VALUES (?, ?)`, name, string(b))
		if isUnique(err) {
			return fmt.Errorf("%s %q: %w", s.noun, name, ErrExists)
		}
		return err
	}
	res, err := c.db.ExecContext(ctx, `UPDATE `+s.table+` SET spec = ? WHERE name = ?`, string(b), name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%s %q: %w", s.noun, name, ErrNotFound)
	}
	return nil
}

// get reads one row's spec into v.
func (s specTable) get(ctx context.Context, c *Catalog, name string, v any) error {
	var spec string
	err := c.db.QueryRowContext(ctx, `SELECT spec FROM `+s.table+` WHERE name = ?`, name).Scan(&spec)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s %q: %w", s.noun, name, ErrNotFound)
	}
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(spec), v)
}

// delete removes one row.
func (s specTable) delete(ctx context.Context, c *Catalog, name string) error {
	res, err := c.db.ExecContext(ctx, `DELETE FROM `+s.table+` WHERE name = ?`, name)
	if err != nil {
		return err
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return fmt.Errorf("%s %q: %w", s.noun, name, ErrNotFound)
	}
	return nil
}
