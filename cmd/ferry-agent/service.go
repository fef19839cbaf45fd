package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync/atomic"

	"github.com/kardianos/service"
	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/installer"
)

// exitError ends the command with a given status and no message.
type exitError struct{ code int }

func (e *exitError) Error() string { return "exit status " + strconv.Itoa(e.code) }

// addServiceCommands adds install, uninstall, status, start, stop and
// restart (the OS service; see the installer package).
func addServiceCommands(root *cobra.Command, g *globals) {
	root.AddCommand(newInstallCommand(g), newUninstallCommand(g), newStatusCommand(g),
		newServiceVerb(g, "start", "Start the installed service", (*installer.Installer).Start),
		newServiceVerb(g, "stop", "Stop the installed service", (*installer.Installer).Stop),
		newServiceVerb(g, "restart", "Restart the installed service", (*installer.Installer).Restart))
}

// serviceNameFlag is the hidden --service-name every service command
// takes: another name gets a separate service and paths (tests, or two
// agents on one host).
func serviceNameFlag(cmd *cobra.Command, cfg *installer.Config) {
	cmd.Flags().StringVar(&cfg.ServiceName, "service-name", installer.DefaultServiceName, "the service's name (and base of its paths)")
	cmd.Flags().MarkHidden("service-name")
}

func newInstallCommand(g *globals) *cobra.Command {
	cfg := installer.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "install --controller HOST:PORT --token TOKEN [--name NAME] [--allow-plan-scripts] [--allow-exec-drivers]",
		Short: "Enrol, install the agent as an OS service and start it",
		Long: `Enrol with the controller (unless this host is already enrolled), copy this
binary to the service's path, write the configuration, install the service
(systemd, SysV init or a Windows service) and start it. Run again over an
installed agent, it upgrades the binary in place and keeps the enrolment
(the token is then not needed). A failed step undoes the ones before it.

The agent runs recovery plan scripts and exec driver commands (the --start,
--stop, … of 'ferry protect' and 'ferry targets add') for the controller only
when installed with --allow-plan-scripts and --allow-exec-drivers; a reinstall
without them withdraws them. They are recorded in the state directory and on
the service's command line.

Linux: binary /usr/local/bin/ferry-agent, config /etc/ferry/ferry-agent.yaml,
state /var/lib/ferry-agent. Windows: %ProgramFiles%\Ferry\ferry-agent.exe,
config and state under %ProgramData%\Ferry.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if (cfg.Controller == "") != (cfg.Token == "") {
				return usagef("--controller and --token go together")
			}
			cfg.Out = g.stdout
			in, err := installer.New(cfg)
			if err != nil {
				return usagef("%v", err)
			}
			err = in.Install(c.Context())
			if errors.Is(err, installer.ErrTokenRequired) {
				return usagef("%v", err)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Controller, "controller", "", "the controller's agent port, HOST:PORT")
	f.StringVar(&cfg.Token, "token", "", "an enrolment token (ferry tokens create)")
	f.StringVar(&cfg.Name, "name", "", "this agent's name (default: the host name)")
	allowFlags(cmd, &cfg.Allow.PlanScripts, &cfg.Allow.ExecDrivers, "recorded in the state directory and on the service's command line")
	serviceNameFlag(cmd, &cfg)
	return cmd
}

func newUninstallCommand(g *globals) *cobra.Command {
	cfg := installer.DefaultConfig()
	var purge bool
	cmd := &cobra.Command{
		Use:   "uninstall [--purge]",
		Short: "Stop and remove the service and everything install put on this host",
		Long: `Stop the service and remove it with everything 'install' put on this host:
the binary, the configuration, the service definition (and SysV rc links),
logs. The state directory (the enrolment and block maps) is kept unless
--purge is given; the controller keeps the agent until 'ferry agents remove'.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg.Out = g.stdout
			in, err := installer.New(cfg)
			if err != nil {
				return usagef("%v", err)
			}
			return in.Uninstall(c.Context(), purge)
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "also remove the state directory (the enrolment)")
	serviceNameFlag(cmd, &cfg)
	return cmd
}

func newStatusCommand(g *globals) *cobra.Command {
	cfg := installer.DefaultConfig()
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show the service's state, version and enrolment (exit 0 running, 3 stopped, 4 not installed)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			in, err := installer.New(cfg)
			if err != nil {
				return usagef("%v", err)
			}
			st, err := in.Status(c.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(st); err != nil {
					return err
				}
			} else {
				printStatus(g.stdout, st)
			}
			switch st.State {
			case installer.StateStopped:
				return &exitError{3}
			case installer.StateNotInstalled:
				return &exitError{4}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	serviceNameFlag(cmd, &cfg)
	return cmd
}

func printStatus(w io.Writer, st installer.Status) {
	fmt.Fprintf(w, "service:    %s (%s)\n", st.Service, st.System)
	fmt.Fprintf(w, "state:      %s\n", st.State)
	if st.Binary != "" {
		fmt.Fprintf(w, "binary:     %s (%s)\n", st.Binary, st.Version)
	}
	if st.Config != "" {
		fmt.Fprintf(w, "config:     %s\n", st.Config)
	}
	if st.Agent != nil {
		fmt.Fprintf(w, "agent:      %s (%s), enrolled with %s\n", st.Agent.Name, st.Agent.ID, st.Agent.Controller)
	} else {
		fmt.Fprintf(w, "agent:      not enrolled\n")
	}
	fmt.Fprintf(w, "state dir:  %s\n", st.StateDir)
	if u := st.Upgrade; u != nil {
		line := fmt.Sprintf("%s to %s: %s", u.From, u.To, u.State)
		if u.Error != "" {
			line += " (" + u.Error + ")"
		}
		fmt.Fprintf(w, "upgrade:    %s\n", line)
	}
}

func newServiceVerb(g *globals, verb, short string, do func(*installer.Installer, context.Context) error) *cobra.Command {
	cfg := installer.DefaultConfig()
	cmd := &cobra.Command{
		Use: verb, Short: short, Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			in, err := installer.New(cfg)
			if err != nil {
				return usagef("%v", err)
			}
			if err := do(in, c.Context()); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: %s done\n", cfg.ServiceName, verb)
			return nil
		},
	}
	serviceNameFlag(cmd, &cfg)
	return cmd
}

// addRunServiceFlags adds what the service's command line uses to run.
func addRunServiceFlags(cmd *cobra.Command, o *runOptions) {
	f := cmd.Flags()
	f.StringVar(&o.configFile, "config", "", "read settings from this file (what the service passes; flags override it)")
	f.BoolVar(&o.supervise, "supervise", false, "run the agent under a supervisor that restarts it and carries out controller-pushed upgrades (what the service runs)")
	f.DurationVar(&o.trial, "upgrade-trial", installer.DefaultUpgradeTrial, "with --supervise: how long a pushed binary may run before the controller confirms it")
}

// applyConfigFile fills options from --config where no flag was given.
func applyConfigFile(c *cobra.Command, o *runOptions) error {
	if o.configFile == "" {
		return nil
	}
	ac, err := installer.LoadAgentConfig(o.configFile)
	if err != nil {
		return err
	}
	f := c.Flags()
	if !f.Changed("state-dir") {
		o.cfg.StateDir = ac.StateDir
	}
	if !f.Changed("log-level") && ac.LogLevel != "" {
		o.logLevel = ac.LogLevel
	}
	if !f.Changed("scan") && len(ac.Scan) > 0 {
		o.cfg.ScanDirs = ac.Scan
	}
	if !f.Changed("streams") && ac.Streams > 0 {
		o.cfg.Streams = ac.Streams
	}
	if !f.Changed("upgrade-trial") {
		o.trial, _ = ac.Trial()
	}
	if !f.Changed("track-writes") && ac.TrackWrites {
		o.cfg.TrackWrites = true
	}
	if !f.Changed("max-capture") && ac.MaxCapture > 0 {
		o.cfg.MaxCapture = ac.MaxCapture
	}
	if d, _ := ac.Freeze(); !f.Changed("max-freeze") && d > 0 { // LoadAgentConfig checked it
		o.cfg.MaxFreeze = d
	}
	if !f.Changed("freeze-own-fs") && len(ac.FreezeOwnFS) > 0 {
		o.cfg.FreezeOwnFS = ac.FreezeOwnFS
	}
	o.logFile = ac.LogFile
	o.cfg.LogFile = ac.LogFile
	return nil
}

// supervised reports whether the service's supervisor started this
// process (SupervisorEnv names our parent).
func supervised() bool {
	v := os.Getenv(installer.SupervisorEnv)
	return v != "" && v == strconv.Itoa(os.Getppid())
}

// logOutput is where the agent logs: the configured file when nobody
// collects the output (a Windows service), else stderr. A supervised agent
// writes to stderr, which its supervisor points at that file.
func logOutput(o *runOptions) (io.Writer, func(), error) {
	if o.logFile == "" || supervised() {
		return os.Stderr, func() {}, nil
	}
	f, err := os.OpenFile(o.logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("log file: %w", err)
	}
	return f, func() { f.Close() }, nil
}

// superviseChild prepares an agent its supervisor runs: upgrades become
// possible, and the end of stdin (the supervisor stopping it, or dying)
// ends the agent. restart reports whether the agent ended to be restarted
// into a staged upgrade.
func superviseChild(ctx context.Context, o *runOptions) (_ context.Context, restart func() bool, _ error) {
	if !supervised() {
		return ctx, func() bool { return false }, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	var again atomic.Bool
	o.cfg.Upgrade = &agent.UpgradeConfig{Binary: exe, Restart: func() { again.Store(true); cancel() }}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	return ctx, again.Load, nil
}

// supervisorProgram is the supervisor as a kardianos program, so that the
// Windows service control manager can start and stop it.
type supervisorProgram struct {
	parent context.Context
	cfg    installer.SupervisorConfig
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func (p *supervisorProgram) Start(service.Service) error {
	ctx, cancel := context.WithCancel(p.parent)
	p.cancel = cancel
	go func() {
		p.err = installer.Supervise(ctx, p.cfg)
		close(p.done)
	}()
	return nil
}

func (p *supervisorProgram) Stop(service.Service) error {
	p.cancel()
	<-p.done
	return p.err
}

// runSupervisor is `run --supervise`: the service's main process. It runs
// this binary again without --supervise as the agent.
func runSupervisor(ctx context.Context, o *runOptions, logOut io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	args := slices.DeleteFunc(slices.Clone(os.Args[1:]), func(a string) bool {
		return a == "--supervise" || a == "--supervise=true"
	})
	cfg := installer.DefaultSupervisorConfig()
	cfg.Binary, cfg.Args, cfg.StateDir, cfg.Trial = exe, args, o.cfg.StateDir, o.trial
	cfg.Stdout, cfg.Stderr, cfg.Logger = logOut, logOut, o.cfg.Logger
	p := &supervisorProgram{parent: ctx, cfg: cfg, done: make(chan struct{})}
	svc, err := service.New(p, &service.Config{Name: installer.DefaultServiceName, Option: service.KeyValue{
		// Off Windows, the process ends on SIGTERM/SIGINT (ctx) or when the
		// supervisor gives up.
		"RunWait": func() {
			select {
			case <-ctx.Done():
			case <-p.done:
			}
		},
	}})
	if err != nil {
		return err
	}
	if err := svc.Run(); err != nil {
		return err
	}
	return p.err
}
