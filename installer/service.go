package installer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/kardianos/service"
)

// Service states as Status reports them.
const (
	StateRunning      = "running"
	StateStopped      = "stopped"
	StateNotInstalled = "not-installed"
)

// noProgram is the kardianos program of the commands that manage the
// service from outside (install, start, status…); they never Run it.
type noProgram struct{}

func (noProgram) Start(service.Service) error { return nil }
func (noProgram) Stop(service.Service) error  { return nil }

// managed is the agent's service on this host's service manager.
type managed struct {
	svc    service.Service
	system string
	name   string
	layout Layout
}

// detectSystem is the service manager kardianos found on this host.
func detectSystem() string {
	if s := service.ChosenSystem(); s != nil {
		return s.String()
	}
	return ""
}

func newManaged(name string, l Layout) (*managed, error) {
	system := detectSystem()
	def, err := definition(system, name, l)
	if err != nil {
		return nil, err
	}
	svc, err := service.New(noProgram{}, def)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", name, err)
	}
	return &managed{svc: svc, system: system, name: name, layout: l}, nil
}

// definitionFile is the file the service manager reads the service from
// (none on Windows, where it lives in the registry).
func (m *managed) definitionFile() string {
	switch m.system {
	case SystemSystemd:
		return "/etc/systemd/system/" + m.name + ".service"
	case SystemSysV:
		return "/etc/init.d/" + m.name
	}
	return ""
}

// status asks the service manager. kardianos's SysV status fails on a
// stopped service (the script exits 3, LSB's "not running"), so SysV is
// asked through the script directly.
func (m *managed) status(ctx context.Context) (string, error) {
	if m.system == SystemSysV {
		script := m.definitionFile()
		if _, err := os.Stat(script); errors.Is(err, os.ErrNotExist) {
			return StateNotInstalled, nil
		}
		err := exec.CommandContext(ctx, script, "status").Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return StateRunning, nil
		case errors.As(err, &ee) && ee.ExitCode() == 3:
			return StateStopped, nil
		default:
			return "", fmt.Errorf("%s status: %w", script, err)
		}
	}
	if m.system == SystemSystemd {
		return m.systemdStatus(ctx)
	}
	st, err := m.svc.Status()
	switch {
	case errors.Is(err, service.ErrNotInstalled):
		return StateNotInstalled, nil
	case err != nil:
		return "", err
	case st == service.StatusRunning:
		return StateRunning, nil
	case st == service.StatusStopped:
		return StateStopped, nil
	}
	return "", fmt.Errorf("service %s: unknown status", m.name)
}

// waitState polls the service manager until the service is in state.
func (m *managed) waitState(ctx context.Context, want string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := m.status(ctx)
		if err == nil && st == want {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("it is %s", st)
			}
			return fmt.Errorf("service %s did not become %s within %s: %w", m.name, want, timeout, err)
		case <-tick.C:
		}
	}
}

func (m *managed) start(ctx context.Context) error {
	if err := m.svc.Start(); err != nil {
		return fmt.Errorf("start service %s: %w", m.name, err)
	}
	return m.waitState(ctx, StateRunning, 15*time.Second)
}

func (m *managed) stop(ctx context.Context) error {
	st, err := m.status(ctx)
	if err != nil {
		return err
	}
	if st != StateRunning {
		return nil
	}
	if err := m.svc.Stop(); err != nil {
		return fmt.Errorf("stop service %s: %w", m.name, err)
	}
	return m.waitState(ctx, StateStopped, 40*time.Second)
}

// install writes the service definition and registers it (systemctl
// enable, rc links, the SCM).
func (m *managed) install() error {
	if err := m.svc.Install(); err != nil {
		return fmt.Errorf("install service %s: %w", m.name, err)
	}
	return nil
}

// uninstall removes the service definition and what kardianos leaves: the
// SysV rc links, and the unit or script if unregistering failed midway.
func (m *managed) uninstall() error {
	err := m.svc.Uninstall()
	if err != nil {
		err = fmt.Errorf("uninstall service %s: %w", m.name, err)
	}
	var errs []error
	for _, f := range m.leftovers() {
		if rerr := os.Remove(f); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			errs = append(errs, rerr)
		}
	}
	if def := m.definitionFile(); def != "" {
		if _, serr := os.Stat(def); serr == nil {
			if rerr := os.Remove(def); rerr != nil {
				errs = append(errs, rerr)
			}
		} else if err != nil && errors.Is(serr, os.ErrNotExist) {
			err = nil // gone anyway (e.g. daemon-reload failed after the removal)
		}
	}
	return errors.Join(append([]error{err}, errs...)...)
}

// leftovers are files kardianos's Uninstall does not remove.
func (m *managed) leftovers() []string {
	var out []string
	switch m.system {
	case SystemSysV:
		for _, pat := range []string{"/etc/rc[0-6S].d/[SK][0-9][0-9]" + m.name} {
			links, _ := filepath.Glob(pat)
			out = append(out, links...)
		}
	case SystemSystemd:
		out = append(out, "/etc/systemd/system/multi-user.target.wants/"+m.name+".service")
	}
	return out
}

// installed reports whether the service manager knows the service.
func (m *managed) installed(ctx context.Context) (bool, error) {
	st, err := m.status(ctx)
	if err != nil {
		if def := m.definitionFile(); def != "" {
			if _, serr := os.Stat(def); serr == nil {
				return true, nil
			}
		}
		return false, err
	}
	return st != StateNotInstalled, nil
}

// systemdStatus asks systemctl: kardianos reports a failed unit as an
// error, where "stopped" is the answer (the unit is installed, not running).
func (m *managed) systemdStatus(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "systemctl", "is-active", m.name+".service").Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return "", fmt.Errorf("systemctl is-active: %w", err)
	}
	switch strings.TrimSpace(string(out)) {
	case "active", "activating", "reloading", "deactivating":
		return StateRunning, nil
	}
	if _, err := os.Stat(m.definitionFile()); errors.Is(err, os.ErrNotExist) {
		return StateNotInstalled, nil
	}
	return StateStopped, nil
}
