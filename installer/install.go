package installer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Config says what to install and how to report it.
type Config struct {
	// ServiceName names the service and, through DefaultLayout, every path.
	ServiceName string
	// Layout is where files go; zero = DefaultLayout for ServiceName.
	Layout Layout
	// Source is the binary to install; "" = the running executable.
	Source string
	// Controller, Token and Name enrol the agent when it is not enrolled.
	Controller string
	Token      string
	Name       string
	// Allow lets the controller run plan scripts and exec driver commands
	// on this host: recorded in the state directory and on the service's
	// command line (Layout.Allow).
	Allow msg.Permissions
	// Out receives one line per thing done, for the person installing.
	Out    io.Writer
	Logger *slog.Logger
}

// DefaultConfig installs the default service from the running executable.
func DefaultConfig() Config { return Config{ServiceName: DefaultServiceName} }

// Validate fills defaults.
func (c *Config) Validate() error {
	if c.ServiceName == "" {
		c.ServiceName = DefaultServiceName
	}
	if strings.ContainsAny(c.ServiceName, `/\ '"$`) {
		return fmt.Errorf("service name %q: use letters, digits, '-' and '_'", c.ServiceName)
	}
	if c.Layout == (Layout{}) {
		c.Layout = DefaultLayout(runtime.GOOS, c.ServiceName, os.Getenv)
	}
	c.Layout.Allow = c.Allow
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Installer installs, inspects and removes one agent service.
type Installer struct {
	cfg Config
	out io.Writer
	log *slog.Logger
}

// New checks the configuration.
func New(cfg Config) (*Installer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Installer{cfg: cfg, out: cfg.Out, log: cfg.Logger}, nil
}

func (i *Installer) say(format string, args ...any) {
	fmt.Fprintf(i.out, format+"\n", args...)
}

// undoStack runs compensating steps in reverse when an install fails.
type undoStack struct {
	steps []struct {
		what string
		fn   func() error
	}
}

func (u *undoStack) push(what string, fn func() error) {
	u.steps = append(u.steps, struct {
		what string
		fn   func() error
	}{what, fn})
}

func (u *undoStack) run() (done []string, errs []error) {
	for k := len(u.steps) - 1; k >= 0; k-- {
		if err := u.steps[k].fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", u.steps[k].what, err))
			continue
		}
		done = append(done, u.steps[k].what)
	}
	return done, errs
}

// Install enrols (unless already enrolled), puts the binary and its
// configuration in place, installs the service and starts it. Over an
// installed agent it upgrades the binary in place and keeps the enrolment.
// A failed step undoes the ones before it.
func (i *Installer) Install(ctx context.Context) error {
	if err := requirePrivilege(); err != nil {
		return err
	}
	l := i.cfg.Layout
	m, err := newManaged(i.cfg.ServiceName, l)
	if err != nil {
		return err
	}
	src := i.cfg.Source
	if src == "" {
		if src, err = os.Executable(); err != nil {
			return err
		}
	}
	version, err := binaryVersion(ctx, src)
	if err != nil {
		return err
	}
	wasInstalled, err := m.installed(ctx)
	if err != nil {
		return err
	}
	var undo undoStack
	fail := func(step string, err error) error {
		done, uerrs := undo.run()
		for _, d := range done {
			i.say("undone: %s", d)
		}
		return &StepError{Step: step, Err: err, Undone: done, UndoErrors: uerrs}
	}

	// 1. Enrolment first: a refused token changes nothing on the host.
	st, err := agent.LoadState(l.StateDir)
	switch {
	case err == nil:
		i.say("keeping the enrolment as %s (%s) with %s in %s", st.Identity.Name, st.Identity.ID, st.Identity.Controller, l.StateDir)
		if i.cfg.Token != "" {
			i.say("the token was not used (the agent is already enrolled; ferry-agent uninstall --purge forgets the enrolment)")
		}
	case errors.Is(err, agent.ErrNotEnrolled):
		if i.cfg.Controller == "" || i.cfg.Token == "" {
			return ErrTokenRequired
		}
		before, stateExisted := entries(l.StateDir)
		st, err = agent.Enroll(ctx, agent.EnrollConfig{Controller: i.cfg.Controller, Token: i.cfg.Token, Name: i.cfg.Name,
			StateDir: l.StateDir, Logger: i.log, Allow: i.cfg.Allow})
		if err != nil {
			if !stateExisted {
				os.RemoveAll(l.StateDir)
			} else {
				removeNewEntries(l.StateDir, before)
			}
			return fmt.Errorf("enrol with %s: %w", i.cfg.Controller, err)
		}
		i.say("enrolled as %s (%s) with %s; state in %s", st.Identity.Name, st.Identity.ID, st.Identity.Controller, l.StateDir)
		undo.push("enrolment state "+l.StateDir+" removed (the controller keeps agent "+st.Identity.Name+": ferry agents remove "+st.Identity.Name+")", func() error {
			if stateExisted {
				return removeNewEntries(l.StateDir, before)
			}
			return os.RemoveAll(l.StateDir)
		})
	default:
		return fmt.Errorf("agent state in %s: %w", l.StateDir, err)
	}

	// 1b. What the agent allows, recorded afresh: a reinstall without the
	// flags withdraws what an earlier install or enrol allowed.
	prevPerms, err := agent.LoadPermissions(l.StateDir)
	if err != nil {
		return fail("read what the agent allows", err)
	}
	if err := agent.SavePermissions(l.StateDir, i.cfg.Allow); err != nil {
		return fail("record what the agent allows", err)
	}
	undo.push("the agent's permissions restored", func() error { return agent.SavePermissions(l.StateDir, prevPerms) })
	i.say("%s", permissionsLine(i.cfg.Allow))

	// 2. A running service of an earlier install is stopped for the swap.
	if wasInstalled {
		if err := m.stop(ctx); err != nil {
			return fail("stop the installed service", err)
		}
		i.say("stopped the installed service %s", i.cfg.ServiceName)
		undo.push("service "+i.cfg.ServiceName+" started again", func() error { return m.start(ctx) })
	}

	// 3. The binary.
	created, err := mkdirs(filepath.Dir(l.Binary), 0o755)
	if err != nil {
		return fail("create "+filepath.Dir(l.Binary), err)
	}
	undo.push("directories "+strings.Join(created, ", ")+" removed", func() error { return removeDirs(created) })
	if same, _ := sameFile(src, l.Binary); !same {
		prev := l.Binary + ".prev"
		had := exists(l.Binary)
		if had {
			if err := copyFileAtomic(l.Binary, prev, 0o755); err != nil {
				return fail("keep the previous binary", err)
			}
		}
		if err := copyFileAtomic(src, l.Binary, 0o755); err != nil {
			os.Remove(prev)
			return fail("install the binary", err)
		}
		if had {
			undo.push("previous binary restored to "+l.Binary, func() error { return os.Rename(prev, l.Binary) })
			i.say("replaced %s with ferry-agent %s", l.Binary, version)
		} else {
			undo.push("binary "+l.Binary+" removed", func() error { return os.Remove(l.Binary) })
			i.say("installed %s (ferry-agent %s)", l.Binary, version)
		}
	} else {
		i.say("%s is already the installed binary (ferry-agent %s)", l.Binary, version)
	}

	// 4. The configuration: written once, kept across reinstalls (it may
	// carry the operator's edits).
	if exists(l.ConfigFile) {
		if _, err := LoadAgentConfig(l.ConfigFile); err != nil {
			return fail("check the existing configuration", err)
		}
		i.say("kept the configuration %s", l.ConfigFile)
	} else {
		created, err := mkdirs(filepath.Dir(l.ConfigFile), 0o755)
		if err != nil {
			return fail("create "+filepath.Dir(l.ConfigFile), err)
		}
		undo.push("directories "+strings.Join(created, ", ")+" removed", func() error { return removeDirs(created) })
		if err := writeAgentConfig(l.ConfigFile, DefaultAgentConfig(l, runtime.GOOS)); err != nil {
			return fail("write the configuration", err)
		}
		undo.push("configuration "+l.ConfigFile+" removed", func() error { return os.Remove(l.ConfigFile) })
		i.say("wrote the configuration %s", l.ConfigFile)
	}
	if l.LogFile != "" && runtime.GOOS == "windows" {
		created, err := mkdirs(filepath.Dir(l.LogFile), 0o755)
		if err != nil {
			return fail("create "+filepath.Dir(l.LogFile), err)
		}
		undo.push("directories "+strings.Join(created, ", ")+" removed", func() error { return removeDirs(created) })
	}

	// 5. The service definition, rendered afresh by this build.
	if wasInstalled {
		if err := m.uninstall(); err != nil {
			return fail("replace the service definition", err)
		}
		undo.push("service "+i.cfg.ServiceName+" registered again", m.install)
	}
	if err := m.install(); err != nil {
		m.uninstall()
		return fail("install the service", err)
	}
	undo.push("service "+i.cfg.ServiceName+" unregistered", m.uninstall)
	if def := m.definitionFile(); def != "" {
		i.say("installed the %s service %s (%s)", m.system, i.cfg.ServiceName, def)
	} else {
		i.say("installed the %s service %s", m.system, i.cfg.ServiceName)
	}

	// 6. What Uninstall and Status read.
	man := Manifest{Service: i.cfg.ServiceName, System: m.system, Version: version, Binary: l.Binary,
		ConfigFile: l.ConfigFile, StateDir: l.StateDir, Installed: time.Now().UTC().Truncate(time.Second)}
	if err := writeManifest(l.Manifest, man); err != nil {
		return fail("write the manifest", err)
	}
	undo.push("manifest "+l.Manifest+" removed", func() error { return os.Remove(l.Manifest) })

	// 7. Start.
	if err := m.start(ctx); err != nil {
		m.svc.Stop()
		return fail("start the service", err)
	}
	os.Remove(l.Binary + ".prev")
	i.say("started %s: ferry-agent %s runs as %s with %s", i.cfg.ServiceName, version, st.Identity.Name, st.Identity.Controller)
	return nil
}

// permissionsLine tells the person installing what the controller may run
// on this host.
func permissionsLine(p msg.Permissions) string {
	switch {
	case p.PlanScripts && p.ExecDrivers:
		return "the agent runs plan scripts and exec driver commands for the controller"
	case p.PlanScripts:
		return "the agent runs plan scripts for the controller, no exec driver commands (--allow-exec-drivers)"
	case p.ExecDrivers:
		return "the agent runs exec driver commands for the controller, no plan scripts (--allow-plan-scripts)"
	}
	return "the agent runs no plan scripts or exec driver commands for the controller (--allow-plan-scripts, --allow-exec-drivers)"
}
