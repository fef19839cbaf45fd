package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Hypervisor is a fake recovery-site hypervisor for the exec driver: start
// records the machine as running with the environment it was given,
// stop records it stopped, status prints the state. It checks the CLI.md
// contract: the disks named in FERRY_DISKS must exist when a machine starts.
type Hypervisor struct {
	Dir string
}

// NewHypervisor makes the state directory.
func NewHypervisor(t testing.TB) *Hypervisor {
	t.Helper()
	return &Hypervisor{Dir: t.TempDir()}
}

// Flags returns the targets add driver flags.
func (h *Hypervisor) Flags() []string {
	st := h.Dir + `/"$FERRY_MACHINE"`
	return []string{
		"--start", `set -e; printf '%s\n' "$FERRY_DISKS" | while read -r d; do [ -z "$d" ] || [ -f "$d" ] || { echo "missing disk $d" >&2; exit 1; }; done; env | grep '^FERRY_' > ` + st + `.env; echo running > ` + st + `.state`,
		"--stop", `echo stopped > ` + st + `.state`,
		"--status", `cat ` + st + `.state 2>/dev/null || echo absent`,
	}
}

// State returns a machine's power state.
func (h *Hypervisor) State(machine string) string {
	b, err := os.ReadFile(filepath.Join(h.Dir, machine+".state"))
	if err != nil {
		return "absent"
	}
	return strings.TrimSpace(string(b))
}

// Env returns the FERRY_* environment of a machine's last start.
func (h *Hypervisor) Env(t testing.TB, machine string) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(h.Dir, machine+".env"))
	require.NoError(t, err, "machine %s was never started", machine)
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	var last string
	for sc.Scan() {
		line := sc.Text()
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "FERRY_") {
			env[k], last = v, k
		} else if last != "" {
			env[last] += "\n" + line // FERRY_DISKS spans lines
		}
	}
	return env
}

// Disks returns the disk paths a machine was started with.
func (h *Hypervisor) Disks(t testing.TB, machine string) []string {
	var out []string
	for _, d := range strings.Split(h.Env(t, machine)["FERRY_DISKS"], "\n") {
		if d != "" {
			out = append(out, d)
		}
	}
	return out
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
