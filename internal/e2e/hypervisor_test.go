package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrydr/ferry/internal/rig"
)

// Hypervisor is the fake recovery-site hypervisor for the exec driver of
// internal/rig (start records the machine running with its FERRY_*
// environment after checking that the disks in FERRY_DISKS exist, stop
// records it stopped, status prints the state), given as targets add flags.
type Hypervisor struct {
	*rig.Hypervisor
}

// NewHypervisor makes the state directory.
func NewHypervisor(t testing.TB) *Hypervisor {
	t.Helper()
	return &Hypervisor{rig.NewHypervisor(t)}
}

// Flags returns the targets add driver flags.
func (h *Hypervisor) Flags() []string {
	d := h.Driver()
	return []string{"--start", d.Start, "--stop", d.Stop, "--status", d.Status}
}

// Site is a recovery site: an agent, a target directory and a hypervisor.
type Site struct {
	Agent *Agent
	Dir   string
	Hyp   *Hypervisor
	Name  string
}

// AddSite enrols a recovery-site agent and adds a target named name, with
// extra flags for `ferry targets add` (e.g. --format).
func AddSite(t testing.TB, c *Controller, addr, name string, extra ...string) *Site {
	t.Helper()
	return AddSiteAgent(t, c, EnrollAgent(t, c, addr, name+"-agent"), name, extra...)
}

// AddSiteAgent adds a target named name served by an enrolled agent.
func AddSiteAgent(t testing.TB, c *Controller, a *Agent, name string, extra ...string) *Site {
	t.Helper()
	s := &Site{Name: name, Dir: t.TempDir(), Hyp: NewHypervisor(t), Agent: a}
	args := append([]string{"targets", "add", name, "--agent", a.Name, "--dir", s.Dir}, s.Hyp.Flags()...)
	c.MustFerry(append(args, extra...)...)
	return s
}

// Files lists every file under the site's directory (relative paths).
func (s *Site) Files(t testing.TB) []string {
	t.Helper()
	var out []string
	filepath.Walk(s.Dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			rel, _ := filepath.Rel(s.Dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// StagedPoint waits until a machine's staged replica holds point id.
func (s *Site) StagedPath(machine, disk string) string {
	return filepath.Join(s.Dir, machine, "staged", disk+".raw")
}

func (s *Site) String() string { return fmt.Sprintf("site %s at %s", s.Name, s.Dir) }
