package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Helpers of the installation tests (install_test.go, upgrade_test.go,
// systemd_test.go): agent builds with distinct versions, dist directories
// as make dist lays them out, and a search for anything an agent service
// left on the host.

var (
	versionedMu     sync.Mutex
	versionedBuilds = map[string]string{}
	versionedDir    string
)

// agentBuild returns a ferry-agent binary stamped with version, built once
// per test process (go build -ldflags -X …Version=version, cgo-free).
func agentBuild(t testing.TB, version string) string {
	t.Helper()
	versionedMu.Lock()
	defer versionedMu.Unlock()
	if p, ok := versionedBuilds[version]; ok {
		return p
	}
	if versionedDir == "" {
		d, err := os.MkdirTemp("", "ferry-e2e-versions")
		require.NoError(t, err)
		versionedDir = d
	}
	out := filepath.Join(versionedDir, "ferry-agent-"+version)
	cmd := exec.Command("go", "build", "-ldflags", "-X github.com/ferrydr/ferry/internal/buildinfo.Version="+version,
		"-o", out, "./cmd/ferry-agent")
	cmd.Dir = moduleRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	b, err := cmd.CombinedOutput()
	require.NoError(t, err, "build agent %s: %s", version, b)
	versionedBuilds[version] = out
	return out
}

// hostDistFile is the dist name of this host's agent build.
func hostDistFile() string {
	name := "ferry-agent-" + runtime.GOOS + "-" + runtime.GOARCH
	if runtime.GOOS == "windows" {
		name += ".exe"
	}
	return name
}

// makeDist lays out a dist directory as scripts/dist.sh does, with bin as
// this host's build of version.
func makeDist(t testing.TB, version, bin string) string {
	t.Helper()
	dir := t.TempDir()
	b, err := os.ReadFile(bin)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, hostDistFile()), b, 0o755))
	sum := sha256.Sum256(b)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(hex.EncodeToString(sum[:])+"  "+hostDistFile()+"\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "VERSION"), []byte(version+"\n"), 0o644))
	return dir
}

// corrupt flips one byte in the middle of a file and returns an undo.
func corrupt(t testing.TB, path string) func() {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	orig := bytes.Clone(b)
	b[len(b)/2] ^= 0xff
	require.NoError(t, os.WriteFile(path, b, 0o755))
	return func() { require.NoError(t, os.WriteFile(path, orig, 0o755)) }
}

// runCmd runs a command and returns its combined output and exit code.
func runCmd(t testing.TB, name string, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	require.NoError(t, err, "%s %s", name, strings.Join(args, " "))
	return string(out), 0
}

// agentRow is an agent as `agents list --json` shows it.
type agentRow struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Version   string `json:"version"`
	Platform  string `json:"platform"`
	Connected bool   `json:"connected"`
}

func (c *Controller) agent(name string) (agentRow, bool) {
	var rows []agentRow
	c.JSON(&rows, "agents", "list")
	for _, r := range rows {
		if r.Name == name {
			return r, true
		}
	}
	return agentRow{}, false
}

// waitAgentVersion waits until agent name is connected running version.
func (c *Controller) waitAgentVersion(name, version string, timeout time.Duration) agentRow {
	c.t.Helper()
	var got agentRow
	require.Eventually(c.t, func() bool {
		r, ok := c.agent(name)
		got = r
		return ok && r.Connected && r.Version == version
	}, timeout, 50*time.Millisecond, "agent %s never connected running %s (last seen: %+v)", name, version, got)
	return got
}

// upgradeResult is one row of `ferry agents upgrade --json`.
type upgradeResult struct {
	Agent       string `json:"agent"`
	FromVersion string `json:"from_version"`
	ToVersion   string `json:"to_version"`
	State       string `json:"state"`
	Error       string `json:"error"`
}

func (c *Controller) upgrade(args ...string) ([]upgradeResult, int) {
	c.t.Helper()
	r := c.Ferry(append([]string{"agents", "upgrade", "--json"}, args...)...)
	var res []upgradeResult
	require.NoError(c.t, json.Unmarshal([]byte(r.Stdout), &res), "stdout %q stderr %q", r.Stdout, r.Stderr)
	return res, r.Code
}

// serviceTraces lists what a service named name has on this host: files
// whose names contain it where the installer writes, and processes running
// a binary whose path contains it. An uninstalled service leaves none.
func serviceTraces(name string) []string {
	var out []string
	for _, dir := range []string{"/etc/init.d", "/etc/rc0.d", "/etc/rc1.d", "/etc/rc2.d", "/etc/rc3.d", "/etc/rc4.d",
		"/etc/rc5.d", "/etc/rc6.d", "/etc/rcS.d", "/etc/ferry", "/usr/local/bin", "/var/lib", "/var/log", "/var/run", "/run",
		"/etc/systemd/system", "/etc/systemd/system/multi-user.target.wants"} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.Contains(e.Name(), name) {
				out = append(out, filepath.Join(dir, e.Name()))
			}
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", p.Name(), "exe")); err == nil && strings.Contains(exe, name) {
			out = append(out, fmt.Sprintf("process %d (%s)", pid, exe))
		}
	}
	return out
}

// serviceName is a service name of this test process only.
func serviceName(t testing.TB, kind string) string {
	return fmt.Sprintf("ferry-agent-e2e-%s-%d", kind, os.Getpid())
}

// tmpInstallDirs lists install.sh's temporary directories.
func tmpInstallDirs() []string {
	dir := os.Getenv("TMPDIR")
	if dir == "" {
		dir = "/tmp"
	}
	m, _ := filepath.Glob(filepath.Join(dir, "ferry-install.*"))
	return m
}

func goarch() string { return runtime.GOARCH }

// supervisorPID is the service's main process: the SysV pid file, or
// systemd's MainPID.
func supervisorPID(t testing.TB, name string) int {
	t.Helper()
	var s string
	if b, err := os.ReadFile("/var/run/" + name + ".pid"); err == nil {
		s = string(b)
	} else {
		out, err := exec.Command("systemctl", "show", "--value", "-p", "MainPID", name+".service").Output()
		require.NoError(t, err, "no pid file and no systemd MainPID for %s", name)
		s = string(out)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(s))
	require.NoError(t, err)
	return pid
}

// childOfOrZero is the pid of a child of parent, or 0.
func childOfOrZero(parent int) int {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …: comm may hold spaces, so cut at the last ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(parent) {
			return pid
		}
	}
	return 0
}

func childOf(t testing.TB, parent int) int {
	t.Helper()
	var pid int
	require.Eventually(t, func() bool { pid = childOfOrZero(parent); return pid != 0 }, 10*time.Second, 20*time.Millisecond,
		"process %d has no child", parent)
	return pid
}

func syscallKill(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// pidAlive: the process exists and is not a zombie waiting to be reaped.
func pidAlive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}
