package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/agent/ship"
	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/installer"
	"github.com/ferrydr/ferry/internal/buildinfo"
	"github.com/ferrydr/ferry/internal/cliflags"
	"github.com/ferrydr/ferry/internal/profiling"
)

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

type globals struct {
	stdout, stderr io.Writer
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "ferry-agent",
		Short: "Ferry agent: replicates this host's disks to a Ferry controller",
		Long: `ferry-agent runs on every protected host and on recovery-site hosts. It
enrols once with a token, then keeps a session with the controller (dialling
out only), replicates the machines it is told to protect, and applies blocks
at the recovery site.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{cliflags.WithSuggestion(cmd, err).Error()}
	})
	root.AddCommand(newEnrollCommand(g), newRunCommand(g), newVersionCommand(g), newKeyCommand(g))
	addServiceCommands(root, g)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintln(stderr, "ferry-agent:", err)
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

type enrollOptions struct {
	cfg agent.EnrollConfig
}

func newEnrollCommand(g *globals) *cobra.Command {
	o := enrollOptions{cfg: agent.EnrollConfig{StateDir: agent.DefaultStateDir()}}
	cmd := &cobra.Command{
		Use:   "enroll --controller HOST:PORT --token TOKEN [--name NAME] --state-dir DIR [--allow-plan-scripts] [--allow-exec-drivers]",
		Short: "Enrol with a controller (without installing a service)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if o.cfg.Controller == "" || o.cfg.Token == "" {
				return usagef("--controller and --token are required")
			}
			st, err := agent.Enroll(c.Context(), o.cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "enrolled as %s (%s) with %s; state in %s\n", st.Identity.Name, st.Identity.ID, st.Identity.Controller, st.Dir)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.cfg.Controller, "controller", "", "the controller's agent port, HOST:PORT")
	f.StringVar(&o.cfg.Token, "token", "", "an enrolment token (ferry tokens create)")
	f.StringVar(&o.cfg.Name, "name", "", "this agent's name (default: the host name)")
	f.StringVar(&o.cfg.StateDir, "state-dir", o.cfg.StateDir, "where the agent keeps its identity and block maps")
	allowFlags(cmd, &o.cfg.Allow.PlanScripts, &o.cfg.Allow.ExecDrivers, "recorded in the state directory for run")
	return cmd
}

type runOptions struct {
	cfg        agent.Config
	logLevel   string
	cpuProfile string
	// Service-side options (service.go).
	configFile string
	supervise  bool
	trial      time.Duration
	logFile    string
}

func newRunCommand(g *globals) *cobra.Command {
	return runCommand(g, &runOptions{cfg: agent.DefaultConfig()})
}

// runCommand is `run` with its flags bound to o.
func runCommand(g *globals, o *runOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run [--state-dir DIR] [--config FILE] [--supervise] [--allow-plan-scripts] [--allow-exec-drivers]",
		Short: "Run in the foreground (what the service runs)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := applyConfigFile(c, o); err != nil {
				return err
			}
			if err := snapshot.CheckMaxFreeze(o.cfg.MaxFreeze); err != nil {
				return usagef("--max-freeze: %v", err)
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
				return usagef("--log-level %q: want debug, info, warn or error", o.logLevel)
			}
			logOut, closeLog, err := logOutput(o)
			if err != nil {
				return err
			}
			defer closeLog()
			o.cfg.Logger = slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: level}))
			if o.supervise {
				return runSupervisor(c.Context(), o, logOut)
			}
			ctx, restart, err := superviseChild(c.Context(), o)
			if err != nil {
				return err
			}
			stop, err := profiling.Start(o.cpuProfile)
			if err != nil {
				return err
			}
			defer stop()
			limitMemory()
			if v := os.Getenv(testPauseEnv); v != "" {
				if o.cfg.TestPause, err = testPause(v, os.Stderr); err != nil {
					return usagef("%s: %v", testPauseEnv, err)
				}
			}
			if v := os.Getenv(wireCodecEnv); v != "" {
				if o.cfg.WireCodec, err = ship.ParseCodecChoice(v); err != nil {
					return usagef("%s: %v", wireCodecEnv, err)
				}
			}
			a, err := agent.New(o.cfg)
			if err != nil {
				return err
			}
			err = a.Run(ctx)
			if restart() {
				return &exitError{installer.ExitRestart}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.cfg.StateDir, "state-dir", o.cfg.StateDir, "the agent's state directory")
	f.StringArrayVar(&o.cfg.ScanDirs, "scan", nil, "a directory to search for disk image files for inventory (repeatable)")
	f.IntVar(&o.cfg.Streams, "streams", o.cfg.Streams, "data streams per cycle")
	f.DurationVar(&o.cfg.KeepaliveInterval, "keepalive-interval", 0, "time between keepalive pings to the controller (0: 10s)")
	f.DurationVar(&o.cfg.KeepaliveTimeout, "keepalive-timeout", 0, "how long a ping or a write may wait before the session counts as dead (0: 30s)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.cpuProfile, "cpu-profile", "", "write a CPU profile to this file until exit (for benchmarks)")
	f.BoolVar(&o.cfg.TrackWrites, "track-writes", false, "follow writes to raw images on XFS or ext4 (tracepoints) or to whole block devices with a mounted filesystem (eBPF dirty bitmap), and make points by briefly freezing their filesystems (root; not for images written through mmap)")
	f.Int64Var(&o.cfg.MaxCapture, "max-capture", agent.DefaultMaxCapture, "with --track-writes: the most changed bytes one freeze reads into memory (more: a clone view)")
	f.DurationVar(&o.cfg.MaxFreeze, "max-freeze", snapshot.DefaultMaxFreeze, "the longest any filesystem stays frozen (a tracked freeze, or --freeze of an app-consistent view); more than 0s, at most 60s")
	f.StringSliceVar(&o.cfg.FreezeOwnFS, "freeze-own-fs", nil, "with --track-writes: a mount point that tracked freezes may freeze although it is the root filesystem or holds the agent's state directory or log (repeatable or comma-separated); the agent's log waits in memory while it is frozen")
	allowFlags(cmd, &o.cfg.AllowPlanScripts, &o.cfg.AllowExecDrivers, "in addition to what enroll or install recorded")
	addRunServiceFlags(cmd, o)
	return cmd
}

func newVersionCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "version", Short: "Print the version", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintln(g.stdout, buildinfo.Version)
			return nil
		},
	}
}

// wireCodecEnv fixes how `ferry-agent run` compresses the blocks it sends
// (auto, zstd, s2 or none; default auto: S2 or zstd chosen per stream), so
// that benchmarks and tests can compare codecs. Not a flag: operators have
// no reason to set it (docs/protocol.md §6.3).
const wireCodecEnv = "FERRY_WIRE_CODEC"

// agentMemoryLimit is the agent's soft heap limit. The agent is a guest on
// the host it protects: what it holds in flight is bounded (agent/ship),
// and with Go's default GC pacing the heap would still grow to twice the
// live data between collections. Near the limit the GC runs more often
// instead. It is soft: the agent never fails for reaching it.
const agentMemoryLimit = 40 << 20

// limitMemory applies agentMemoryLimit unless GOMEMLIMIT says otherwise.
func limitMemory() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(agentMemoryLimit)
	}
}

// allowFlags adds --allow-plan-scripts and --allow-exec-drivers: running
// commands on this host for the controller is the host owner's choice, made
// here and nowhere on the controller.
func allowFlags(cmd *cobra.Command, planScripts, execDrivers *bool, note string) {
	f := cmd.Flags()
	f.BoolVar(planScripts, "allow-plan-scripts", false, "let the controller run recovery plan script actions on this host ("+note+")")
	f.BoolVar(execDrivers, "allow-exec-drivers", false, "let the controller run exec driver commands (--start, --stop, … of protect and targets add) on this host ("+note+")")
}
