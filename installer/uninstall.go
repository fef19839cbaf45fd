package installer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
)

// Uninstall stops and removes the service and every file Install put on
// the host — binary (and an upgrade's staged or previous one), configuration,
// manifest, service definition, SysV rc links, log and pid files — and kills
// any agent process left running from the binary. The state directory (the
// enrolment) stays unless purge is set.
func (i *Installer) Uninstall(ctx context.Context, purge bool) error {
	if err := requirePrivilege(); err != nil {
		return err
	}
	l := i.cfg.Layout
	m, err := newManaged(i.cfg.ServiceName, l)
	if err != nil {
		return err
	}
	var errs []error
	installed, err := m.installed(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	if installed {
		if err := m.stop(ctx); err != nil {
			errs = append(errs, err)
		} else {
			i.say("stopped the service %s", i.cfg.ServiceName)
		}
	}
	// Whatever the service manager says, nothing may keep running.
	for _, pid := range killBinaryProcesses(l.Binary) {
		i.say("killed agent process %d", pid)
	}
	if installed || exists(m.definitionFile()) {
		if err := m.uninstall(); err != nil {
			errs = append(errs, err)
		} else {
			i.say("removed the %s service %s", m.system, i.cfg.ServiceName)
		}
	} else {
		for _, f := range m.leftovers() {
			os.Remove(f)
		}
		i.say("the service %s was not installed", i.cfg.ServiceName)
	}
	files := append([]string{l.Binary, l.ConfigFile, l.Manifest, l.LogFile, l.PIDFile}, l.stagingFiles()...)
	for _, f := range files {
		if f == "" {
			continue
		}
		switch err := removeFile(f); {
		case err == nil:
			i.say("removed %s", f)
		case !errors.Is(err, os.ErrNotExist):
			errs = append(errs, err)
		}
	}
	for _, d := range []string{filepath.Dir(l.LogFile), l.ConfigDir, filepath.Dir(l.Binary)} {
		if d == "" || d == "/var/log" || d == "/usr/local/bin" {
			continue
		}
		if gone, err := removeIfEmpty(d); err != nil {
			errs = append(errs, err)
		} else if gone {
			i.say("removed the empty directory %s", d)
		}
	}
	if purge {
		if exists(l.StateDir) {
			if err := os.RemoveAll(l.StateDir); err != nil {
				errs = append(errs, err)
			} else {
				i.say("removed the state directory %s (the enrolment is gone; ferry agents remove forgets the agent at the controller)", l.StateDir)
			}
		}
	} else if exists(l.StateDir) {
		i.say("kept the state directory %s (the enrolment; --purge removes it)", l.StateDir)
	}
	return errors.Join(errs...)
}
