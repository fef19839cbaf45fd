package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/internal/profiling"
	"github.com/ferrydr/ferry/scripts"
)

type serveOptions struct {
	cfg        controller.Config
	logLevel   string
	cpuProfile string
	reserve    string
	quota      string
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
	o.cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	o.cfg.Scripts = scripts.Files()
	o.cfg.OnReady = func(agentAddr, adminAddr string) {
		fmt.Fprintf(g.stdout, "ferry controller listening on %s (admin %s)\n", agentAddr, adminAddr)
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
