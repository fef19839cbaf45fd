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

// Machine states (DESIGN.md "Machines, targets and staging").
const (
	StateSyncing          = "syncing"
	StateProtected        = "protected"
	StateTestFailedOver   = "test-failed-over"
	StateFailedOver       = "failed-over"
	StateCommitted        = "committed"
	StateReprotecting     = "reprotecting"
	StateReverseProtected = "reverse-protected"
	StateFailingBack      = "failing-back"
	StateUnprotected      = "unprotected"
)

// Machine is a protected machine's record.
type Machine struct {
	Name       string
	AgentID    string
	Policy     string
	Target     string
	State      string
	ActiveSite string // source or target
	Direction  string // forward or reverse
	Spec       api.ProtectRequest
	// Resync makes the next cycle compare every block by hash.
	Resync bool
	// Failover is the current (test) failover, if any.
	Failover *api.FailoverInfo
	Created  time.Time
	Updated  time.Time
}

const machineCols = `name, agent_id, policy, target, state, active_site, direction, spec, created_ns, updated_ns, resync, failover`

func scanMachine(sc interface{ Scan(...any) error }) (Machine, error) {
	var m Machine
	var spec, fo string
	var created, updated int64
	if err := sc.Scan(&m.Name, &m.AgentID, &m.Policy, &m.Target, &m.State, &m.ActiveSite, &m.Direction, &spec, &created, &updated, &m.Resync, &fo); err != nil {
		return m, err
	}
	m.Created, m.Updated = fromNS(created), fromNS(updated)
	if fo != "" {
		m.Failover = &api.FailoverInfo{}
		if err := json.Unmarshal([]byte(fo), m.Failover); err != nil {
			return m, err
		}
	}
	return m, json.Unmarshal([]byte(spec), &m.Spec)
}

// AddMachine records a newly protected machine.
func (c *Catalog) AddMachine(ctx context.Context, m Machine) error {
	spec, err := json.Marshal(m.Spec)
	if err != nil {
		return err
	}
	now := c.now()
	_, err = c.db.ExecContext(ctx, `INSERT INTO machines (`+machineCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`,
		m.Name, m.AgentID, m.Policy, m.Target, m.State, m.ActiveSite, m.Direction, string(spec), ns(now), ns(now), m.Resync, failoverJSON(m.Failover))
	if isUnique(err) {
		return fmt.Errorf("machine %q is already protected: %w", m.Name, ErrExists)
	}
	return err
}

// Machine reads one machine.
func (c *Catalog) Machine(ctx context.Context, name string) (Machine, error) {
	m, err := scanMachine(c.db.QueryRowContext(ctx, `SELECT `+machineCols+` FROM machines WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return m, fmt.Errorf("machine %q: %w", name, ErrNotFound)
	}
	return m, err
}

// Machines lists machines by name; agentID filters when not empty.
func (c *Catalog) Machines(ctx context.Context, agentID string) ([]Machine, error) {
	q := `SELECT ` + machineCols + ` FROM machines`
	var args []any
	if agentID != "" {
		q += ` WHERE agent_id = ?`
		args = append(args, agentID)
	}
	rows, err := c.db.QueryContext(ctx, q+` ORDER BY name`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Machine
	for rows.Next() {
		m, err := scanMachine(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// UpdateMachine writes back a machine's mutable fields.
func (c *Catalog) UpdateMachine(ctx context.Context, m Machine) error {
	spec, err := json.Marshal(m.Spec)
	if err != nil {
		return err
	}
	res, err := c.db.ExecContext(ctx, `UPDATE machines SET agent_id=?, policy=?, target=?, state=?, active_site=?, direction=?, spec=?, updated_ns=?, resync=?, failover=? WHERE name=?`,
		m.AgentID, m.Policy, m.Target, m.State, m.ActiveSite, m.Direction, string(spec), ns(c.now()), m.Resync, failoverJSON(m.Failover), m.Name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("machine %q: %w", m.Name, ErrNotFound)
	}
	return nil
}

// SetMachineState changes only the state.
func (c *Catalog) SetMachineState(ctx context.Context, name, state string) error {
	m, err := c.Machine(ctx, name)
	if err != nil {
		return err
	}
	m.State = state
	return c.UpdateMachine(ctx, m)
}

// DeleteMachine forgets a machine.
func (c *Catalog) DeleteMachine(ctx context.Context, name string) error {
	res, err := c.db.ExecContext(ctx, `DELETE FROM machines WHERE name = ?`, name)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("machine %q: %w", name, ErrNotFound)
	}
	return nil
}

func failoverJSON(f *api.FailoverInfo) string {
	if f == nil {
		return ""
	}
	b, _ := json.Marshal(f)
	return string(b)
}
