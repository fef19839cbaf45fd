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
	StateFailedBack       = "failed-back"
	StateBackHome         = "back-home"
	// StateTestFailedBack: a clone of the home disks runs at home as a
	// test (failback --test) while the machine runs at its recovery site
	// and replicates home.
	StateTestFailedBack = "test-failed-back"
	StateUnprotected    = "unprotected"
)

// Machine is a protected machine's record.
type Machine struct {
	Name       string
	AgentID    string
	Policy     string
	Target     string
	State      string
	ActiveSite string // home or recovery (SiteHome, SiteRecovery)
	Direction  string // forward or reverse
	Spec       api.ProtectRequest
	// Resync makes the next cycle compare every block by hash.
	Resync bool
	// Failover is the current (test) failover, if any.
	Failover *api.FailoverInfo
	// RoundTrip is what re-protection recorded for the reverse direction
	// (nil before a first re-protect).
	RoundTrip *RoundTrip
	Created   time.Time
	Updated   time.Time
}

// Sites a machine is active on, and the replication directions.
const (
	SiteHome     = "home"     // where it was first protected
	SiteRecovery = "recovery" // its target site
	Forward      = "forward"  // home → recovery
	Reverse      = "reverse"  // recovery → home
)

// NormalizeSite maps the words of earlier versions (source, target) to
// home and recovery; other words are returned as they are.
func NormalizeSite(s string) string {
	switch s {
	case "source":
		return SiteHome
	case "target":
		return SiteRecovery
	}
	return s
}

// RoundTrip is what a re-protect job recorded for the machine's reverse
// replication: the recovery-site disks the recovery agent reads (the live
// disk set's files), where the home disks are kept as a disk set by the
// home agent, and the points the round trip keeps.
type RoundTrip struct {
	Job string `json:"job"` // the re-protect job that made it
	// InFlight is the job that put the machine in an intermediate state
	// (reprotecting, failing-back); "" otherwise.
	InFlight string `json:"in_flight,omitempty"`
	// Target is the recovery site; RecoveryPaths the disk files its agent
	// reads as the machine's source (by disk, in point order).
	Target        string   `json:"target"`
	RecoveryPaths []string `json:"recovery_paths"`
	// HomeDir is the directory the home agent keeps the home disk set's
	// state in (the disks themselves stay where they are).
	HomeDir string `json:"home_dir"`
	// Divergent is the point that kept the home disks' content before
	// they were first overwritten (home-divergent-<job>).
	Divergent int64 `json:"divergent,omitempty"`
	// SourceIsOff records that the administrator declared the other
	// side's machine off (--source-is-off) instead of Ferry stopping it.
	SourceIsOff bool `json:"source_is_off,omitempty"`
	// Unplanned records that the machine came home by an unplanned
	// failback: the recovery site's disks may hold writes made after the
	// point it came home to, so the forward re-protect keeps them as a
	// point and compares by hash instead of assuming they hold it.
	Unplanned bool `json:"unplanned,omitempty"`
	// Fence is set by an unplanned failback that could not reach the
	// recovery site: its copy of the machine may still run there.
	Fence *Fence `json:"fence,omitempty"`
	// Replica is the target whose disk set replicates the machine home
	// instead of the home disks (reprotect --target); failback starts the
	// machine there through its driver. "" for the home disks themselves.
	Replica string `json:"replica,omitempty"`
	// TestDir is the directory at the home site where failback --test
	// clones the home disks (reprotect --test-dir); "" refuses a test.
	TestDir string `json:"test_dir,omitempty"`
	// Test is the failback --test copy running at home, if any.
	Test *HomeTest `json:"test,omitempty"`
}

// Fence is the recovery site's stop an unplanned failback owes (see
// controller/fence.go): when that site's agent reconnects, its machine is
// stopped through the target driver before anything else, and its disks
// are kept as the point recovery-divergent-<job>.
type Fence struct {
	Job    string `json:"job"`    // the unplanned failback that recorded it
	Target string `json:"target"` // the recovery site
	// Done: the machine there was stopped (StoppedAt) and its disks kept
	// as point Point; until then the fence is pending.
	Done      bool      `json:"done,omitempty"`
	StoppedAt time.Time `json:"stopped_at,omitzero"`
	Point     int64     `json:"point,omitempty"`
	// LastError is why the last attempt did not finish (it is retried at
	// the agent's next connection and periodically).
	LastError string `json:"last_error,omitempty"`
}

// HomeTest is a failback --test: the job that made it, the name the home
// driver knows the test copy by, and the clone's set in TestDir and its
// disk files.
type HomeTest struct {
	Job   string   `json:"job"`
	Name  string   `json:"name"`
	Set   string   `json:"set"`
	Paths []string `json:"paths,omitempty"`
	Point int64    `json:"point"`
}

const machineCols = `name, agent_id, policy, target, state, active_site, direction, spec, created_ns, updated_ns, resync, failover, roundtrip`

func scanMachine(sc interface{ Scan(...any) error }) (Machine, error) {
	var m Machine
	var spec, fo, rt string
	var created, updated int64
	if err := sc.Scan(&m.Name, &m.AgentID, &m.Policy, &m.Target, &m.State, &m.ActiveSite, &m.Direction, &spec, &created, &updated, &m.Resync, &fo, &rt); err != nil {
		return m, err
	}
	m.ActiveSite = NormalizeSite(m.ActiveSite)
	m.Created, m.Updated = fromNS(created), fromNS(updated)
	if rt != "" {
		m.RoundTrip = &RoundTrip{}
		if err := json.Unmarshal([]byte(rt), m.RoundTrip); err != nil {
			return m, err
		}
	}
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
	_, err = c.db.ExecContext(ctx, `INSERT INTO machines (`+machineCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		m.Name, m.AgentID, m.Policy, m.Target, m.State, NormalizeSite(m.ActiveSite), m.Direction, string(spec), ns(now), ns(now), m.Resync, failoverJSON(m.Failover), roundTripJSON(m.RoundTrip))
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
	res, err := c.db.ExecContext(ctx, `UPDATE machines SET agent_id=?, policy=?, target=?, state=?, active_site=?, direction=?, spec=?, updated_ns=?, resync=?, failover=?, roundtrip=? WHERE name=?`,
		m.AgentID, m.Policy, m.Target, m.State, NormalizeSite(m.ActiveSite), m.Direction, string(spec), ns(c.now()), m.Resync, failoverJSON(m.Failover), roundTripJSON(m.RoundTrip), m.Name)
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

func roundTripJSON(r *RoundTrip) string {
	if r == nil {
		return ""
	}
	b, _ := json.Marshal(r)
	return string(b)
}

// AtRecovery reports whether the machine is active at its recovery site
// (the old word "target" included).
func (m Machine) AtRecovery() bool { return NormalizeSite(m.ActiveSite) == SiteRecovery }

// Reversed reports whether replication runs from the recovery site home.
func (m Machine) Reversed() bool { return m.Direction == Reverse }

// RenameMachine gives a machine a new name. The caller makes sure no job
// holds it (a job's record names the machine).
func (c *Catalog) RenameMachine(ctx context.Context, from, to string) error {
	res, err := c.db.ExecContext(ctx, `UPDATE machines SET name=?, updated_ns=? WHERE name=?`, to, ns(c.now()), from)
	if isUnique(err) {
		return fmt.Errorf("machine %q exists already: %w", to, ErrExists)
	}
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("machine %q: %w", from, ErrNotFound)
	}
	return nil
}
