package installer

import (
	"context"
	"errors"
	"os"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Status is what `ferry-agent status` reports.
type Status struct {
	Service string          `json:"service"`
	System  string          `json:"system"`
	State   string          `json:"state"` // running, stopped, not-installed
	Binary  string          `json:"binary,omitempty"`
	Version string          `json:"version,omitempty"`
	Config  string          `json:"config,omitempty"`
	Agent   *agent.Identity `json:"agent,omitempty"`
	// StateDir is where the enrolment is (or would be).
	StateDir string             `json:"state_dir"`
	Upgrade  *msg.UpgradeRecord `json:"last_upgrade,omitempty"`
}

// Status asks the service manager and reads the installation's files.
func (i *Installer) Status(ctx context.Context) (Status, error) {
	l := i.cfg.Layout
	out := Status{Service: i.cfg.ServiceName, StateDir: l.StateDir}
	m, err := newManaged(i.cfg.ServiceName, l)
	if err != nil {
		return out, err
	}
	out.System = m.system
	if out.State, err = m.status(ctx); err != nil {
		return out, err
	}
	if exists(l.Binary) {
		out.Binary = l.Binary
		if v, err := binaryVersion(ctx, l.Binary); err == nil {
			out.Version = v
		}
	}
	if exists(l.ConfigFile) {
		out.Config = l.ConfigFile
	}
	if st, err := agent.LoadState(l.StateDir); err == nil {
		out.Agent = &st.Identity
	} else if !errors.Is(err, agent.ErrNotEnrolled) && !errors.Is(err, os.ErrPermission) {
		return out, err
	}
	if rec, err := agent.ReadUpgradeRecord(l.StateDir); err == nil {
		out.Upgrade = rec
	}
	return out, nil
}

// Start, Stop and Restart drive the installed service.
func (i *Installer) Start(ctx context.Context) error {
	m, err := i.installedService(ctx)
	if err != nil {
		return err
	}
	return m.start(ctx)
}

func (i *Installer) Stop(ctx context.Context) error {
	m, err := i.installedService(ctx)
	if err != nil {
		return err
	}
	return m.stop(ctx)
}

func (i *Installer) Restart(ctx context.Context) error {
	m, err := i.installedService(ctx)
	if err != nil {
		return err
	}
	if err := m.stop(ctx); err != nil {
		return err
	}
	return m.start(ctx)
}

func (i *Installer) installedService(ctx context.Context) (*managed, error) {
	if err := requirePrivilege(); err != nil {
		return nil, err
	}
	m, err := newManaged(i.cfg.ServiceName, i.cfg.Layout)
	if err != nil {
		return nil, err
	}
	ok, err := m.installed(ctx)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotInstalled
	}
	return m, nil
}
