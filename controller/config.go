package controller

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/controller/scrub"
)

// Config is the controller's configuration; cmd/ferry fills it from flags.
type Config struct {
	DataDir     string // catalog, repository, CA; default /var/lib/ferry
	Listen      string // agent port, HOST:PORT; default :7443
	AdminSocket string // default DataDir/admin.sock
	AdminListen string // optional TCP admin address (TLS + bearer token)
	AdminToken  string // bearer token for AdminListen; generated and stored when empty
	Dist        string // directory of agent binaries to serve (make dist)
	Hosts       []string
	// Advertise is the HOST:PORT agents should dial, for install commands;
	// default: the listen address with this host's name.
	Advertise string
	// PublicKeyFile encrypts a new repository to this key (ignored for an
	// existing one).
	PublicKeyFile string
	Logger        *slog.Logger
	Now           func() time.Time
	// OnReady is called once every listener is up, with the agent and admin
	// addresses actually bound.
	OnReady func(agentAddr, adminAddr string)
	// Reserve is the free space (bytes) the data directory's filesystem
	// keeps: below it ingest pauses (docs/limits.md). Negative: the
	// smaller of 1 GiB and 5 % of the filesystem; 0: no reserve.
	Reserve int64
	// MachineQuota, when positive, caps the bytes a machine's retained
	// points may have stored: its cycles are refused at or over it.
	MachineQuota int64
	// Scripts holds install.sh and install.ps1 (the scripts package, wired
	// by cmd/ferry); nil serves neither.
	Scripts fs.FS
	// AuditRate is the point audit's read rate in bytes/s (controller/scrub,
	// docs/audit.md); 0 disables the background audit.
	AuditRate int64
	// AuditEvery: each retained point is re-read this long after its
	// commit or its last audit (default scrub.DefaultEvery).
	AuditEvery time.Duration
	// CompactRate is the background compactor's budget in plain bytes/s:
	// cold S2 chunks re-encoded to zstd (storage.Repo.Compact); 0
	// disables it (GC still compacts).
	CompactRate int64
	// Hooks are test hooks of the job engine (step boundaries, and the
	// failpoints of jobs and staging moves); the zero value in production.
	Hooks jobs.Hooks
	// Alerts times alert evaluation and delivery; zero fields take the
	// defaults of DefaultAlertTiming.
	Alerts AlertTiming
}

// AlertTiming is how often incidents are judged and how deliveries retry.
type AlertTiming struct {
	Every          time.Duration // between two evaluations
	AgentLostAfter time.Duration // disconnected this long: agent-lost
	Backoff        time.Duration // first retry wait, doubling
	MaxBackoff     time.Duration
	MaxAttempts    int
}

// DefaultAlertTiming: incidents judged every 2 s, an agent lost after a
// minute away, a delivery tried 10 times over about 8.5 minutes.
var DefaultAlertTiming = AlertTiming{Every: 2 * time.Second, AgentLostAfter: time.Minute,
	Backoff: time.Second, MaxBackoff: 5 * time.Minute, MaxAttempts: 10}

// DefaultConfig holds CLI.md's defaults.
func DefaultConfig() Config {
	return Config{DataDir: "/var/lib/ferry", Listen: ":7443", Reserve: -1, AuditRate: scrub.DefaultRate, AuditEvery: scrub.DefaultEvery,
		CompactRate: DefaultCompactRate}
}

// Validate fills derived defaults and checks the configuration.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("a data directory is required")
	}
	if c.Listen == "" {
		c.Listen = ":7443"
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("--listen %q: %w", c.Listen, err)
	}
	if c.AdminListen != "" {
		if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
			return fmt.Errorf("--admin-listen %q: %w", c.AdminListen, err)
		}
	}
	if c.AdminSocket == "" {
		c.AdminSocket = filepath.Join(c.DataDir, "admin.sock")
	}
	if c.AuditRate < 0 {
		return fmt.Errorf("--audit-rate %d: want bytes/s, 0 to disable", c.AuditRate)
	}
	if c.CompactRate < 0 {
		return fmt.Errorf("--compact-rate %d: want bytes/s, 0 to disable", c.CompactRate)
	}
	if c.AuditEvery < 0 {
		return fmt.Errorf("--audit-every %s: want a positive duration", c.AuditEvery)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	d := DefaultAlertTiming
	for _, f := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&c.Alerts.Every, d.Every}, {&c.Alerts.AgentLostAfter, d.AgentLostAfter}, {&c.Alerts.Backoff, d.Backoff}, {&c.Alerts.MaxBackoff, d.MaxBackoff}} {
		if *f.v <= 0 {
			*f.v = f.def
		}
	}
	if c.Alerts.MaxAttempts <= 0 {
		c.Alerts.MaxAttempts = d.MaxAttempts
	}
	return nil
}
