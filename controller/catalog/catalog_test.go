package catalog

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func open(t *testing.T) (*Catalog, *clock) {
	t.Helper()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	c, err := Open(context.Background(), filepath.Join(t.TempDir(), "catalog.db"), clk.now)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, clk
}

func TestTokenConsumption(t *testing.T) {
	ctx := context.Background()
	c, clk := open(t)
	hash := []byte("hash-of-secret")
	match := func(h []byte) bool { return string(h) == string(hash) }
	nomatch := func([]byte) bool { return false }
	noop := func(*sql.Tx) error { return nil }
	require.NoError(t, c.AddToken(ctx, Token{ID: "a", SecretHash: hash, Created: clk.t, Expires: clk.t.Add(time.Hour), Uses: 1}))
	require.NoError(t, c.AddToken(ctx, Token{ID: "b", SecretHash: hash, Created: clk.t, Expires: clk.t.Add(time.Hour), Uses: 2}))

	require.ErrorIs(t, c.ConsumeToken(ctx, "a", nomatch, noop), ErrTokenUnknown)
	require.ErrorIs(t, c.ConsumeToken(ctx, "zz", match, noop), ErrTokenUnknown)
	// A failing enrolment does not burn the token.
	require.Error(t, c.ConsumeToken(ctx, "a", match, func(*sql.Tx) error { return sql.ErrConnDone }))
	require.NoError(t, c.ConsumeToken(ctx, "a", match, noop))
	require.ErrorIs(t, c.ConsumeToken(ctx, "a", match, noop), ErrTokenUsed)

	require.NoError(t, c.ConsumeToken(ctx, "b", match, noop))
	require.NoError(t, c.RevokeToken(ctx, "b"))
	require.ErrorIs(t, c.ConsumeToken(ctx, "b", match, noop), ErrTokenRevoked)

	require.NoError(t, c.AddToken(ctx, Token{ID: "c", SecretHash: hash, Created: clk.t, Expires: clk.t.Add(time.Hour), Uses: 1}))
	clk.t = clk.t.Add(time.Hour)
	require.ErrorIs(t, c.ConsumeToken(ctx, "c", match, noop), ErrTokenExpired)

	toks, err := c.Tokens(ctx)
	require.NoError(t, err)
	require.Len(t, toks, 3)
	require.ErrorIs(t, c.RevokeToken(ctx, "nope"), ErrNotFound)
}

func TestAgentsAndCertificates(t *testing.T) {
	ctx := context.Background()
	c, clk := open(t)
	require.NoError(t, c.AddToken(ctx, Token{ID: "t", SecretHash: []byte("h"), Expires: clk.t.Add(time.Hour), Uses: 5}))
	add := func(id, name, serial string) error {
		return c.ConsumeToken(ctx, "t", func([]byte) bool { return true }, func(tx *sql.Tx) error {
			return AddAgent(ctx, tx, Agent{ID: id, Name: name, TokenID: "t", CertSerial: serial, CertNotAfter: clk.t.Add(time.Hour), Enrolled: clk.t})
		})
	}
	require.NoError(t, add("ag-1", "web", "s1"))
	require.ErrorIs(t, add("ag-2", "web", "s2"), ErrExists)
	id, err := c.CertStatus(ctx, "s1")
	require.NoError(t, err)
	require.Equal(t, "ag-1", id)
	_, err = c.CertStatus(ctx, "unknown")
	require.ErrorIs(t, err, ErrNotFound)

	require.NoError(t, c.AddCert(ctx, "ag-1", "s1b", clk.t.Add(2*time.Hour)))
	a, err := c.Agent(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, "s1b", a.CertSerial)

	_, err = c.RevokeAgent(ctx, "web")
	require.NoError(t, err)
	for _, s := range []string{"s1", "s1b"} {
		_, err = c.CertStatus(ctx, s)
		require.ErrorIs(t, err, ErrRevoked)
	}
	_, err = c.RemoveAgent(ctx, "ag-1")
	require.NoError(t, err)
	_, err = c.Agent(ctx, "web")
	require.ErrorIs(t, err, ErrNotFound)
	require.NoError(t, add("ag-3", "web", "s3"), "a removed agent's name is free")
	_, err = c.CertStatus(ctx, "s1")
	require.ErrorIs(t, err, ErrRevoked, "an old agent's certificates stay refused")
}

func TestPoliciesAndMachines(t *testing.T) {
	ctx := context.Background()
	c, _ := open(t)
	require.NoError(t, c.EnsureDefaultPolicy(ctx))
	require.NoError(t, c.EnsureDefaultPolicy(ctx))
	p, err := c.Policy(ctx, "default")
	require.NoError(t, err)
	require.Equal(t, api.DefaultPolicy("default"), p)
	fast := api.DefaultPolicy("fast")
	fast.RPEvery = api.Duration(2 * time.Second)
	require.NoError(t, c.PutPolicy(ctx, fast, true))
	require.ErrorIs(t, c.PutPolicy(ctx, fast, true), ErrExists)
	require.ErrorIs(t, c.PutPolicy(ctx, api.DefaultPolicy("ghost"), false), ErrNotFound)

	m := Machine{Name: "db1", AgentID: "ag-1", Policy: "fast", State: StateSyncing, ActiveSite: "source", Direction: "forward",
		Spec: api.ProtectRequest{Machine: "db1", Disks: []api.DiskRef{{Name: "root", Path: "/x.img"}}}}
	require.NoError(t, c.AddMachine(ctx, m))
	require.ErrorIs(t, c.AddMachine(ctx, m), ErrExists)
	require.ErrorIs(t, c.DeletePolicy(ctx, "fast"), ErrExists, "a used policy cannot be deleted")
	require.NoError(t, c.SetMachineState(ctx, "db1", StateProtected))
	got, err := c.Machine(ctx, "db1")
	require.NoError(t, err)
	require.Equal(t, StateProtected, got.State)
	require.Equal(t, "/x.img", got.Spec.Disks[0].Path)
	ms, err := c.Machines(ctx, "ag-1")
	require.NoError(t, err)
	require.Len(t, ms, 1)
	require.NoError(t, c.DeleteMachine(ctx, "db1"))
	require.NoError(t, c.DeletePolicy(ctx, "fast"))
	_, err = c.Machine(ctx, "db1")
	require.ErrorIs(t, err, ErrNotFound)
}

func TestRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(ctx, file, nil)
	require.NoError(t, err)
	_, err = c.db.Exec("PRAGMA user_version = 99")
	require.NoError(t, err)
	require.NoError(t, c.Close())
	_, err = Open(ctx, file, nil)
	require.ErrorIs(t, err, ErrNewer)
	require.ErrorContains(t, err, "99")
}

// TestMigrationTargetDrivers: a target stored before drivers existed (no
// "driver" in its spec, schema 2) reads back as an exec target after the
// migration to schema 3, with its commands unchanged; a hypervisor target's
// options and network map round-trip.
func TestMigrationTargetDrivers(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(ctx, p, time.Now)
	require.NoError(t, err)
	_, err = c.db.Exec(`INSERT INTO targets (name, agent_id, spec, created_ns) VALUES ('old', 'a1', '{"name":"old","agent":"x","dir":"/d","exec":{"start":"go"}}', 1)`)
	require.NoError(t, err)
	// Back to schema 2: what later migrations added goes too.
	_, err = c.db.Exec("ALTER TABLE machines DROP COLUMN roundtrip")
	require.NoError(t, err)
	dropTablesAfter4(t, c)
	_, err = c.db.Exec("PRAGMA user_version = 2")
	require.NoError(t, err)
	require.NoError(t, c.Close())

	c, err = Open(ctx, p, time.Now)
	require.NoError(t, err)
	defer c.Close()
	var v int
	require.NoError(t, c.db.QueryRow("PRAGMA user_version").Scan(&v))
	require.Equal(t, SchemaVersion, v)
	old, _, err := c.Target(ctx, "old")
	require.NoError(t, err)
	require.Equal(t, "exec", old.Driver)
	require.Equal(t, "go", old.Exec.Start)

	lv := api.Target{Name: "kvm", Agent: "x", Dir: "/d", Driver: "libvirt", Options: map[string]string{"uri": "qemu:///system"},
		Networks: map[string]string{"lan": "default"}, TestNetwork: "iso", NewMACs: true}
	require.NoError(t, c.AddTarget(ctx, "a1", lv))
	got, _, err := c.Target(ctx, "kvm")
	require.NoError(t, err)
	require.Equal(t, lv, got)
}

// TestMigrationRoundTrip: machines stored with the active-site words of
// schema 3 (source, target) read back as home and recovery after the
// migration to schema 4, in the column too; a round-trip record
// round-trips.
func TestMigrationRoundTrip(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(ctx, p, time.Now)
	require.NoError(t, err)
	require.NoError(t, c.EnsureDefaultPolicy(ctx))
	for _, name := range []string{"h", "r"} {
		require.NoError(t, c.AddMachine(ctx, Machine{Name: name, AgentID: "a", Policy: DefaultPolicyName, State: StateCommitted,
			ActiveSite: SiteHome, Direction: Forward, Spec: api.ProtectRequest{Machine: name}}))
	}
	_, err = c.db.Exec(`UPDATE machines SET active_site = CASE name WHEN 'h' THEN 'source' ELSE 'target' END`)
	require.NoError(t, err)
	_, err = c.db.Exec("ALTER TABLE machines DROP COLUMN roundtrip")
	require.NoError(t, err)
	dropTablesAfter4(t, c)
	_, err = c.db.Exec("PRAGMA user_version = 3")
	require.NoError(t, err)
	require.NoError(t, c.Close())

	c, err = Open(ctx, p, time.Now)
	require.NoError(t, err)
	defer c.Close()
	for name, want := range map[string]string{"h": SiteHome, "r": SiteRecovery} {
		var raw string
		require.NoError(t, c.db.QueryRow(`SELECT active_site FROM machines WHERE name=?`, name).Scan(&raw))
		require.Equal(t, want, raw)
		m, err := c.Machine(ctx, name)
		require.NoError(t, err)
		require.Equal(t, want, m.ActiveSite)
		require.Nil(t, m.RoundTrip)
	}
	m, err := c.Machine(ctx, "r")
	require.NoError(t, err)
	m.Direction = Reverse
	m.RoundTrip = &RoundTrip{Job: "j", Target: "dr", RecoveryPaths: []string{"/d/r/live/d.raw"}, HomeDir: "/h/.ferry-home", Divergent: 7, SourceIsOff: true}
	require.NoError(t, c.UpdateMachine(ctx, m))
	got, err := c.Machine(ctx, "r")
	require.NoError(t, err)
	require.Equal(t, m.RoundTrip, got.RoundTrip)
	require.True(t, got.Reversed() && got.AtRecovery())
}

// dropTablesAfter4 drops what migrations after 0004 added (a downgrade test
// goes back past them).
func dropTablesAfter4(t *testing.T, c *Catalog) {
	t.Helper()
	for _, table := range []string{"plans", "audit", "alerts", "alert_incidents", "point_audits", "drill_runs", "drills", "point_notes"} {
		_, err := c.db.Exec("DROP TABLE " + table)
		require.NoError(t, err)
	}
}

// TestAuditTrail: entries append with increasing IDs, read back oldest
// first, the limit keeps the newest, and they survive a reopen.
func TestAuditTrail(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(ctx, p, time.Now)
	require.NoError(t, err)
	at := time.Unix(1_800_000_000, 0).UTC()
	for i, path := range []string{"/v1/policies", "/v1/failover", "/v1/cleanup"} {
		id, err := c.AppendAudit(ctx, api.AuditEntry{Time: at.Add(time.Duration(i) * time.Second), Who: "uid:0", Via: "socket",
			Method: "POST", Path: path, Targets: []string{"web1"}, Body: []byte(`{"machine":"web1"}`), Result: api.AuditOK, Job: "j" + path})
		require.NoError(t, err)
		require.Equal(t, int64(i+1), id)
	}
	_, err = c.AppendAudit(ctx, api.AuditEntry{Time: at, Who: "token:sha256:ab", Via: "tls", Method: "DELETE", Path: "/v1/targets/x",
		Result: api.AuditError, Code: "not_found", Message: "no target x"})
	require.NoError(t, err)
	require.NoError(t, c.Close())

	c, err = Open(ctx, p, time.Now)
	require.NoError(t, err)
	defer c.Close()
	all, err := c.Audit(ctx, 0)
	require.NoError(t, err)
	require.Len(t, all, 4)
	require.Equal(t, "/v1/policies", all[0].Path)
	require.Equal(t, at, all[0].Time)
	require.Equal(t, []string{"web1"}, all[1].Targets)
	require.JSONEq(t, `{"machine":"web1"}`, string(all[1].Body))
	require.Equal(t, "j/v1/failover", all[1].Job)
	require.Equal(t, []string{}, all[3].Targets)
	require.Equal(t, "not_found", all[3].Code)
	last2, err := c.Audit(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, []int64{3, 4}, []int64{last2[0].ID, last2[1].ID})
}

// TestConnectionsStayOpenAfterABurst: after 12 callers used the catalog at
// once, their connections stay open for the next burst; none is closed
// (each new one opens the WAL again and syncs the directory on its first
// commit: a plan of 20 machines opened ~100 of them in 3 s).
func TestConnectionsStayOpenAfterABurst(t *testing.T) {
	c, _ := open(t)
	ctx := context.Background()
	burst := func() {
		var conns []*sql.Conn
		for range 12 {
			conn, err := c.db.Conn(ctx)
			require.NoError(t, err)
			require.NoError(t, conn.PingContext(ctx))
			conns = append(conns, conn)
		}
		for _, conn := range conns {
			require.NoError(t, conn.Close())
		}
	}
	burst()
	opened := c.db.Stats().OpenConnections
	require.GreaterOrEqual(t, opened, 12)
	burst()
	st := c.db.Stats()
	require.Zero(t, st.MaxIdleClosed, "no connection was closed for want of an idle slot")
	require.Equal(t, opened, st.OpenConnections, "the second burst reused the first one's connections")
}
