package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/internal/profiling"
	"github.com/ferrydr/ferry/scripts"
)

type serveOptions struct {
	cfg        controller.Config
	logLevel   string
	cpuProfile string
	reserve    string
	quota      string
	agentLost  string
	auditRate  string
	compact    string
}

func newServeCommand(g *globals) *cobra.Command {
	o := serveOptions{cfg: controller.DefaultConfig()}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the controller",
		Long: `Run the Ferry controller: it accepts agents on --listen (TLS 1.3; agent
sessions and the install endpoints share the port), stores recovery points in
--data, and serves the admin API on a 0600 Unix socket (and optionally on TCP
with TLS and a bearer token). It prints "listening on HOST:PORT" once ready.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error { return runServe(c.Context(), g, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.cfg.DataDir, "data", o.cfg.DataDir, "data directory (catalog, repository, CA)")
	f.StringVar(&o.cfg.Listen, "listen", o.cfg.Listen, "agent port, HOST:PORT (:0 picks a free port)")
	f.StringVar(&o.cfg.AdminSocket, "admin-socket", "", "admin socket path (default DATA/admin.sock)")
	f.StringVar(&o.cfg.AdminListen, "admin-listen", "", "also serve the admin API on HOST:PORT with TLS and a bearer token (DATA/admin.token)")
	f.StringVar(&o.cfg.Dist, "dist", "", "directory of agent binaries to serve for one-command installs (make dist)")
	f.StringArrayVar(&o.cfg.Hosts, "host", nil, "extra DNS name or IP for the server certificate (repeatable)")
	f.StringVar(&o.cfg.Advertise, "advertise", "", "HOST:PORT agents should dial, for install commands")
	f.StringVar(&o.cfg.PublicKeyFile, "public-key", "", "encrypt a new repository to this public key file (ferry keys generate)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.reserve, "reserve", "", "free space to keep on the --data filesystem: below it replication pauses, admin writes go on (SIZE such as 2GiB; 0 for none; default the smaller of 1GiB and 5% of the filesystem)")
	f.StringVar(&o.quota, "machine-quota", "", "most bytes one machine's retained points may store: its replication pauses at it (SIZE; default none)")
	f.StringVar(&o.agentLost, "agent-lost-after", "1m", "how long an agent may be disconnected before agent-lost alerts fire")
	f.StringVar(&o.auditRate, "audit-rate", "", "the point audit's read rate (SIZE per second such as 32MiB; 0 disables the background audit; default 32MiB)")
	f.StringVar(&o.compact, "compact-rate", "", "re-encode cold S2 chunks to zstd at most this fast (SIZE per second of plain data such as 16MiB; 0 disables the background compactor; default 16MiB)")
	f.DurationVar(&o.cfg.AuditEvery, "audit-every", o.cfg.AuditEvery, "audit each retained point this long after its commit and after its last audit")
	f.StringVar(&o.cpuProfile, "cpu-profile", "", "write a CPU profile to this file until exit (for benchmarks)")
	return cmd
}

func runServe(ctx context.Context, g *globals, o serveOptions) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return usagef("--log-level %q: want debug, info, warn or error", o.logLevel)
	}
	if o.reserve != "" {
		n, err := api.ParseSize(o.reserve)
		if err != nil {
			return usagef("--reserve %q: %v", o.reserve, err)
		}
		o.cfg.Reserve = n
	}
	if o.quota != "" {
		n, err := api.ParseSize(o.quota)
		if err != nil {
			return usagef("--machine-quota %q: %v", o.quota, err)
		}
		o.cfg.MachineQuota = n
	}
	d, err := api.ParseDuration(o.agentLost)
	if err != nil || d <= 0 {
		return usagef("--agent-lost-after %q: want a positive duration such as 90s or 5m", o.agentLost)
	}
	o.cfg.Alerts.AgentLostAfter = time.Duration(d)
	if o.auditRate != "" {
		n, err := parseRate(o.auditRate)
		if err != nil {
			return usagef("--audit-rate %q: %v", o.auditRate, err)
		}
		o.cfg.AuditRate = n
	}
	if o.compact != "" {
		n, err := parseRate(o.compact)
		if err != nil {
			return usagef("--compact-rate %q: %v", o.compact, err)
		}
		o.cfg.CompactRate = n
	}
	o.cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	o.cfg.Scripts = scripts.Files()
	o.cfg.OnReady = func(agentAddr, adminAddr string) {
		fmt.Fprintf(g.stdout, "ferry controller listening on %s (admin %s)\n", agentAddr, adminAddr)
	}
	if fp := os.Getenv(failpointEnv); fp != "" {
		h, err := failpointHooks(fp, os.Stderr)
		if err != nil {
			return usagef("%s: %v", failpointEnv, err)
		}
		o.cfg.Hooks = h
	}
	if v := os.Getenv(pauseEnv); v != "" {
		before, err := pauseBeforeStep(v, os.Stderr)
		if err != nil {
			return usagef("%s: %v", pauseEnv, err)
		}
		o.cfg.Hooks.BeforeStep = before
	}
	stop, err := profiling.Start(o.cpuProfile)
	if err != nil {
		return err
	}
	defer stop()
	srv, err := controller.New(o.cfg)
	if err != nil {
		return usagef("%v", err)
	}
	return srv.Run(ctx)
}

// failpointEnv names a failpoint at which `ferry serve` kills itself with
// SIGKILL: NAME (its first hit) or NAME#N (its N-th hit). Crash tests
// (internal/e2e/crash_jobs_test.go) set it; docs/crash-semantics.md
// "Jobs and staging" lists the names.
const failpointEnv = "FERRY_TEST_FAILPOINT"

// failpointHooks parses a failpointEnv value into hooks that print
// "failpoint NAME#N: killing the controller" to w and kill the process.
func failpointHooks(v string, w io.Writer) (jobs.Hooks, error) {
	name, hitText, hasHit := strings.Cut(v, "#")
	hit := 1
	if hasHit {
		n, err := strconv.Atoi(hitText)
		if err != nil || n < 1 {
			return jobs.Hooks{}, fmt.Errorf("%q: want NAME or NAME#N with N >= 1", v)
		}
		hit = n
	}
	if !slices.Contains(failpoints, name) {
		return jobs.Hooks{}, fmt.Errorf("unknown failpoint %q (known: %s)", name, strings.Join(failpoints, ", "))
	}
	var mu sync.Mutex
	seen := 0
	return jobs.Hooks{Failpoint: func(at string) {
		if at != name {
			return
		}
		mu.Lock()
		defer mu.Unlock() // held until the kill: no other goroutine passes
		if seen++; seen < hit {
			return
		}
		fmt.Fprintf(w, "failpoint %s#%d: killing the controller\n", name, seen)
		p, err := os.FindProcess(os.Getpid())
		if err == nil {
			err = p.Kill()
		}
		if err == nil {
			select {} // SIGKILL is on its way
		}
		fmt.Fprintf(w, "failpoint %s: kill failed: %v\n", name, err)
		os.Exit(137)
	}}, nil
}

// failpoints are the names failpointEnv accepts.
var failpoints = []string{jobs.FailStepRunning, jobs.FailStepDone, jobs.FailRollingBack, failover.FailMoveMid}
