package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

// AddAlert stores a new rule (ErrExists if its name is taken).
func (c *Catalog) AddAlert(ctx context.Context, r api.AlertRule) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = c.db.ExecContext(ctx, `INSERT INTO alerts (name, spec) VALUES (?, ?)`, r.Name, string(b))
	if isUnique(err) {
		return fmt.Errorf("alert %q: %w", r.Name, ErrExists)
	}
	return err
}

// Alerts lists every rule with its status, by name.
func (c *Catalog) Alerts(ctx context.Context) ([]api.Alert, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT spec, status FROM alerts ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.Alert{}
	for rows.Next() {
		var spec, status string
		if err := rows.Scan(&spec, &status); err != nil {
			return nil, err
		}
		var a api.Alert
		if err := json.Unmarshal([]byte(spec), &a.AlertRule); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(status), &a.Status); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// Alert reads one rule with its status.
func (c *Catalog) Alert(ctx context.Context, name string) (api.Alert, error) {
	var spec, status string
	err := c.db.QueryRowContext(ctx, `SELECT spec, status FROM alerts WHERE name = ?`, name).Scan(&spec, &status)
	if errors.Is(err, sql.ErrNoRows) {
		return api.Alert{}, fmt.Errorf("alert %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return api.Alert{}, err
	}
	var a api.Alert
	if err := json.Unmarshal([]byte(spec), &a.AlertRule); err != nil {
		return a, err
	}
	return a, json.Unmarshal([]byte(status), &a.Status)
}

// UpdateAlertStatus changes a rule's status with fn, in one transaction
// (deliveries to one rule report concurrently). A removed rule is
// ErrNotFound.
func (c *Catalog) UpdateAlertStatus(ctx context.Context, name string, fn func(*api.AlertStatus)) error {
	return c.inTx(ctx, func(tx *sql.Tx) error {
		var raw string
		err := tx.QueryRowContext(ctx, `SELECT status FROM alerts WHERE name = ?`, name).Scan(&raw)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("alert %q: %w", name, ErrNotFound)
		}
		if err != nil {
			return err
		}
		var st api.AlertStatus
		if err := json.Unmarshal([]byte(raw), &st); err != nil {
			return err
		}
		fn(&st)
		b, err := json.Marshal(st)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE alerts SET status = ? WHERE name = ?`, string(b), name)
		return err
	})
}

// DeleteAlert removes a rule.
func (c *Catalog) DeleteAlert(ctx context.Context, name string) error {
	res, err := c.db.ExecContext(ctx, `DELETE FROM alerts WHERE name = ?`, name)
	if err != nil {
		return err
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return fmt.Errorf("alert %q: %w", name, ErrNotFound)
	}
	return nil
}

// Incident is an open alert incident.
type Incident struct {
	Key     string // event/subject
	Event   string
	Subject string
	Opened  time.Time
	Detail  string
}

// Incidents lists the open incidents by key.
func (c *Catalog) Incidents(ctx context.Context) (map[string]Incident, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT key, event, subject, opened_ns, detail FROM alert_incidents`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]Incident{}
	for rows.Next() {
		var i Incident
		var opened int64
		if err := rows.Scan(&i.Key, &i.Event, &i.Subject, &opened, &i.Detail); err != nil {
			return nil, err
		}
		i.Opened = fromNS(opened)
		out[i.Key] = i
	}
	return out, rows.Err()
}

// OpenIncident records an incident as open (ErrExists if it is).
func (c *Catalog) OpenIncident(ctx context.Context, i Incident) error {
	_, err := c.db.ExecContext(ctx, `INSERT INTO alert_incidents (key, event, subject, opened_ns, detail) VALUES (?, ?, ?, ?, ?)`,
		i.Key, i.Event, i.Subject, ns(i.Opened), i.Detail)
	if isUnique(err) {
		return fmt.Errorf("incident %q: %w", i.Key, ErrExists)
	}
	return err
}

// CloseIncident forgets a resolved incident.
func (c *Catalog) CloseIncident(ctx context.Context, key string) error {
	_, err := c.db.ExecContext(ctx, `DELETE FROM alert_incidents WHERE key = ?`, key)
	return err
}
