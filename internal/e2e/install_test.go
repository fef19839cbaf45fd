package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kardianos/service"
	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// requireHostServiceManager needs root and a service manager the installer
// supports (SysV on the CI machines, systemd on most desktops).
func requireHostServiceManager(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	sys := ""
	if s := service.ChosenSystem(); s != nil {
		sys = s.String()
	}
	testenv.Require(t, sys == "unix-systemv" || sys == "linux-systemd", "needs SysV init or systemd as the service manager, found "+sys)
	if sys == "unix-systemv" {
		testenv.RequireTool(t, "service")
	}
	return sys
}

// uninstallOnCleanup makes sure a test leaves no service behind, whatever
// happened: it runs uninstall --purge with the installed binary or bin.
func uninstallOnCleanup(t *testing.T, bin, name string) {
	t.Cleanup(func() {
		installed := "/usr/local/bin/" + name
		if _, err := os.Stat(installed); err == nil {
			bin = installed
		}
		out, err := exec.Command(bin, "uninstall", "--purge", "--service-name", name).CombinedOutput()
		if err != nil {
			t.Logf("cleanup uninstall: %v\n%s", err, out)
		}
	})
}

// TestServiceLifecycleOnThisHost is the installation acceptance cycle on
// this machine's service manager (SysV here): install → status → restart →
// a newer build installed over it → ferry agents upgrade → uninstall, and
// afterwards no file, rc link or process of the agent remains.
func TestServiceLifecycleOnThisHost(t *testing.T) {
	sys := requireHostServiceManager(t)
	v1, v2, v3 := agentBuild(t, "e2e-v1"), agentBuild(t, "e2e-v2"), agentBuild(t, "e2e-v3")
	c := StartController(t, "--dist", makeDist(t, "e2e-v3", v3))
	name := serviceName(t, "life")
	require.Empty(t, serviceTraces(name), "leftovers of an earlier run")
	uninstallOnCleanup(t, v1, name)
	installed := "/usr/local/bin/" + name
	step := func(what string, f func()) {
		t.Helper()
		start := time.Now()
		f()
		t.Logf("%s: %s", what, time.Since(start).Round(time.Millisecond))
	}

	step("install", func() {
		out, code := runCmd(t, v1, "install", "--controller", c.Addr, "--token", c.Token(), "--name", "life", "--service-name", name)
		require.Equal(t, 0, code, out)
		require.Contains(t, out, "enrolled as life")
		require.Contains(t, out, "installed "+installed+" (ferry-agent e2e-v1)")
		require.Contains(t, out, "installed the "+sys+" service "+name)
		require.Contains(t, out, "started "+name)
	})
	first := c.waitAgentVersion("life", "e2e-v1", 30*time.Second)
	require.Equal(t, "linux/"+goarch(), first.Platform)
	if sys == "unix-systemv" {
		require.FileExists(t, "/etc/init.d/"+name)
		links, _ := filepath.Glob("/etc/rc[0-6].d/[SK][0-9][0-9]" + name)
		require.Len(t, links, 7, "S50 in rc2-5, K02 in rc0, rc1, rc6")
	}
	require.FileExists(t, "/etc/ferry/"+name+".yaml")

	step("status", func() {
		out, code := runCmd(t, installed, "status", "--service-name", name)
		require.Equal(t, 0, code, out)
		require.Regexp(t, `state: +running`, out)
		require.Contains(t, out, "("+first.ID+"), enrolled with "+c.Addr)
	})

	// The supervisor restarts an agent that dies.
	agentPID := childOf(t, supervisorPID(t, name))
	require.NoError(t, syscallKill(agentPID))
	require.Eventually(t, func() bool {
		p := childOfOrZero(supervisorPID(t, name))
		return p != 0 && p != agentPID
	}, 15*time.Second, 50*time.Millisecond, "the supervisor did not restart the killed agent")
	c.waitAgentVersion("life", "e2e-v1", 30*time.Second)

	step("restart", func() {
		before := supervisorPID(t, name)
		out, code := runCmd(t, installed, "restart", "--service-name", name)
		require.Equal(t, 0, code, out)
		require.NotEqual(t, before, supervisorPID(t, name), "restart did not start a new process")
		require.False(t, pidAlive(before))
	})
	c.waitAgentVersion("life", "e2e-v1", 30*time.Second)

	step("install a newer build over it", func() {
		out, code := runCmd(t, v2, "install", "--service-name", name)
		require.Equal(t, 0, code, out)
		require.Contains(t, out, "keeping the enrolment as life ("+first.ID+")")
		require.Contains(t, out, "replaced "+installed+" with ferry-agent e2e-v2")
	})
	second := c.waitAgentVersion("life", "e2e-v2", 30*time.Second)
	require.Equal(t, first.ID, second.ID, "the enrolment changed")

	step("ferry agents upgrade", func() {
		res, code := c.upgrade("life")
		require.Equal(t, 0, code)
		require.Equal(t, []upgradeResult{{Agent: "life", FromVersion: "e2e-v2", ToVersion: "e2e-v3", State: "upgraded"}}, res)
	})
	c.waitAgentVersion("life", "e2e-v3", 30*time.Second)
	out, _ := runCmd(t, installed, "version")
	require.Equal(t, "e2e-v3", strings.TrimSpace(out), "the installed binary is the pushed one")
	require.Eventually(t, func() bool { _, err := os.Stat(installed + ".prev"); return os.IsNotExist(err) }, 10*time.Second, 50*time.Millisecond)
	res, code := c.upgrade("--all")
	require.Equal(t, 0, code)
	require.Equal(t, "current", res[0].State)

	step("uninstall", func() {
		out, code := runCmd(t, installed, "uninstall", "--service-name", name)
		require.Equal(t, 0, code, out)
		require.Contains(t, out, "kept the state directory /var/lib/"+name)
	})
	require.Equal(t, []string{"/var/lib/" + name}, serviceTraces(name), "only the state directory may remain")
	out, code = runCmd(t, v1, "status", "--service-name", name)
	require.Equal(t, 4, code, out)
	require.Regexp(t, `state: +not-installed`, out)
	require.Eventually(t, func() bool { r, _ := c.agent("life"); return !r.Connected }, 10*time.Second, 50*time.Millisecond)

	step("uninstall --purge", func() {
		out, code := runCmd(t, v1, "uninstall", "--purge", "--service-name", name)
		require.Equal(t, 0, code, out)
	})
	require.Empty(t, serviceTraces(name))
}

// TestInstallRefusals: without a token an unenrolled host is a usage
// error; a refused token leaves nothing behind.
func TestInstallRefusals(t *testing.T) {
	requireHostServiceManager(t)
	v1 := agentBuild(t, "e2e-v1")
	c := StartController(t)
	name := serviceName(t, "refuse")
	uninstallOnCleanup(t, v1, name)
	out, code := runCmd(t, v1, "install", "--service-name", name)
	require.Equal(t, 2, code, out)
	require.Contains(t, out, "--controller and --token are required")
	tok := c.Token()
	out, code = runCmd(t, v1, "install", "--controller", c.Addr, "--token", tok, "--service-name", name)
	require.Equal(t, 0, code, out)
	out, code = runCmd(t, "/usr/local/bin/"+name, "uninstall", "--purge", "--service-name", name)
	require.Equal(t, 0, code, out)
	require.Empty(t, serviceTraces(name))
	out, code = runCmd(t, v1, "install", "--controller", c.Addr, "--token", tok, "--service-name", name)
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "token already used")
	require.Empty(t, serviceTraces(name), "a refused enrolment left something")
}

// TestInstallOneLiner runs the Linux line of `ferry tokens create
// --install-command` against a live controller on loopback (with the hidden
// --service-name appended, so the test has a service of its own): it ends
// with the agent connected and listed. A wrong pin, a wrong token, an
// unreachable controller and a corrupted binary each stop it with a clear
// message and leave no trace.
func TestInstallOneLiner(t *testing.T) {
	requireHostServiceManager(t)
	testenv.RequireTool(t, "curl")
	testenv.RequireTool(t, "sha256sum")
	bin := agentBuild(t, "e2e-v1")
	dist := makeDist(t, "e2e-v1", bin)
	c := StartController(t, "--dist", dist)
	name := serviceName(t, "oneliner")
	uninstallOnCleanup(t, bin, name)
	tmpBefore := tmpInstallDirs()

	line := func() string {
		out := c.MustFerry("tokens", "create", "--install-command", "--controller", c.Addr)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		require.Len(t, lines, 2, out)
		require.True(t, strings.HasPrefix(lines[0], "curl "), lines[0])
		return lines[0]
	}
	run := func(l string) (string, int) {
		t.Helper()
		return runCmd(t, "sh", "-c", l+" --service-name "+name)
	}
	noTrace := func(what string) {
		t.Helper()
		require.Empty(t, serviceTraces(name), "%s left something behind", what)
		require.ElementsMatch(t, tmpBefore, tmpInstallDirs(), "%s left its temporary directory", what)
	}

	t.Run("wrong pin", func(t *testing.T) {
		l := regexp.MustCompile(`sha256//[A-Za-z0-9+/=]+`).ReplaceAllString(line(), "sha256//"+strings.Repeat("A", 43)+"=")
		out, _ := run(l)
		t.Logf("%s", out)
		require.Contains(t, out, "public key does not match pinned public key")
		noTrace("a wrong pin")
	})
	t.Run("wrong token", func(t *testing.T) {
		l := line()
		tok := regexp.MustCompile(`--token '([^']+)'`).FindStringSubmatch(l)[1]
		parts := strings.Split(tok, ".")
		parts[2] = strings.Repeat("x", len(parts[2])) // same form, wrong secret
		out, code := run(strings.Replace(l, tok, strings.Join(parts, "."), 1))
		t.Logf("%s", out)
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "enrolment")
		require.Contains(t, out, "ferry install: error: ferry-agent install failed")
		require.Contains(t, out, "nothing was installed")
		noTrace("a wrong token")
		require.NotContains(t, agentNames(t, c), "oneliner")
	})
	t.Run("unreachable controller", func(t *testing.T) {
		l := strings.Replace(line(), "--controller '"+c.Addr+"'", "--controller '127.0.0.1:1'", 1)
		out, code := run(l)
		t.Logf("%s", out)
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "could not download https://127.0.0.1:1/dist/SHA256SUMS")
		noTrace("an unreachable controller")
	})
	t.Run("corrupted binary", func(t *testing.T) {
		restore := corrupt(t, filepath.Join(dist, hostDistFile()))
		defer restore()
		out, code := run(line())
		t.Logf("%s", out)
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "checksum mismatch for "+hostDistFile())
		require.Contains(t, out, "nothing was installed")
		noTrace("a corrupted binary")
	})
	t.Run("installs", func(t *testing.T) {
		start := time.Now()
		out, code := run(line() + " --name oneliner --allow-exec-drivers")
		require.Equal(t, 0, code, out)
		t.Logf("one-liner: %s\n%s", time.Since(start).Round(time.Millisecond), out)
		for _, want := range []string{
			"ferry install: this host is linux/" + goarch() + "; downloading " + hostDistFile(),
			"ferry install: SHA-256 of " + hostDistFile() + " checked",
			"enrolled as oneliner",
			"started " + name,
			"ferry install: done: ferry-agent e2e-v1 runs as a service",
		} {
			require.Contains(t, out, want)
		}
		c.waitAgentVersion("oneliner", "e2e-v1", 30*time.Second)
		// The one-liner passed --allow-exec-drivers on: the service runs with it.
		require.Contains(t, out, "the agent runs exec driver commands for the controller, no plan scripts")
		require.Eventually(t, func() bool { return agentAllows(t, c, "oneliner") == "exec-drivers" }, 30*time.Second, 100*time.Millisecond)
		out, code = runCmd(t, "/usr/local/bin/"+name, "uninstall", "--purge", "--service-name", name)
		require.Equal(t, 0, code, out)
		noTrace("uninstall --purge")
	})
}
