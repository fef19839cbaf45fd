package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// The systemd acceptance cycle runs inside `systemd-nspawn --boot` of a
// debootstrapped Debian built here at test time (never committed). The
// rootfs is cached between runs on one machine under FERRY_TEST_CACHE
// (default /var/cache/ferry-test) and booted with --volatile=overlay, so
// the cache is never written to. The container shares the host's network,
// so the agent inside reaches the controller on loopback.

const (
	rootfsSuite   = "bookworm"
	rootfsInclude = "systemd,systemd-sysv,dbus,curl,ca-certificates"
)

// debianMirror is the Debian mirror apt already uses here.
func debianMirror() string {
	for _, path := range []string{"/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			switch {
			case len(fields) >= 2 && fields[0] == "URIs:" && !strings.Contains(fields[1], "security"):
				f.Close()
				return fields[1]
			case len(fields) >= 3 && fields[0] == "deb" && !strings.Contains(fields[1], "security"):
				f.Close()
				return fields[1]
			}
		}
		f.Close()
	}
	return "http://deb.debian.org/debian"
}

// debianRootfs returns a debootstrapped Debian with systemd, building it
// once per machine. Without FERRY_CI=1 a rootfs that cannot be built skips
// the test; with it, that is a failure.
func debianRootfs(t *testing.T) string {
	t.Helper()
	debootstrap := testenv.RequireTool(t, "debootstrap")
	cache := os.Getenv("FERRY_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/ferry-test"
	}
	sum := sha256.Sum256([]byte(rootfsSuite + "|minbase|" + rootfsInclude))
	dir := filepath.Join(cache, "debian-"+rootfsSuite+"-"+hex.EncodeToString(sum[:6]))
	ready := filepath.Join(dir, "usr/lib/systemd/systemd")
	if _, err := os.Stat(ready); err == nil {
		return dir
	}
	require.NoError(t, os.MkdirAll(cache, 0o755))
	lock, err := os.OpenFile(filepath.Join(cache, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	require.NoError(t, err)
	defer lock.Close()
	require.NoError(t, syscall.Flock(int(lock.Fd()), syscall.LOCK_EX)) // another run may be building it
	if _, err := os.Stat(ready); err == nil {
		return dir
	}
	tmp := dir + ".building"
	os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, debootstrap, "--variant=minbase", "--include="+rootfsInclude, rootfsSuite, tmp, debianMirror()).CombinedOutput()
	if err != nil {
		os.RemoveAll(tmp)
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		testenv.Require(t, false, fmt.Sprintf("cannot build the Debian rootfs for the systemd container (debootstrap: %v): %s",
			err, strings.Join(lines[max(0, len(lines)-5):], " | ")))
	}
	require.NoError(t, os.Rename(tmp, dir))
	t.Logf("built the container rootfs %s in %s", dir, time.Since(start).Round(time.Second))
	return dir
}

// container is a booted systemd-nspawn container.
type container struct {
	t      *testing.T
	nspawn *exec.Cmd
	done   chan struct{}
	pid1   int
	log    string
}

// bootContainer boots rootfs with bind mounted read-only at /ferry.
func bootContainer(t *testing.T, rootfs, bind string) *container {
	t.Helper()
	testenv.RequireTool(t, "systemd-nspawn")
	testenv.RequireTool(t, "nsenter")
	c := &container{t: t, done: make(chan struct{}), log: filepath.Join(t.TempDir(), "nspawn.log")}
	logf, err := os.Create(c.log)
	require.NoError(t, err)
	// --register=no --keep-unit: no host systemd to register with.
	c.nspawn = exec.Command("systemd-nspawn", "-D", rootfs, "--volatile=overlay", "--boot", "--register=no", "--keep-unit",
		"-M", fmt.Sprintf("ferrye2e%d", os.Getpid()), "--bind-ro="+bind+":/ferry")
	c.nspawn.Stdout, c.nspawn.Stderr = logf, logf
	require.NoError(t, c.nspawn.Start())
	go func() {
		c.nspawn.Wait()
		logf.Close()
		close(c.done)
	}()
	t.Cleanup(c.shutdown)
	require.Eventually(t, func() bool {
		c.pid1 = childOfOrZero(c.nspawn.Process.Pid)
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.pid1))
		return c.pid1 != 0 && strings.TrimSpace(string(b)) == "systemd"
	}, 20*time.Second, 20*time.Millisecond, "the container's systemd did not start: %s", c.logTail)
	var state string
	require.Eventually(t, func() bool {
		state, _ = c.exec("systemctl", "is-system-running")
		state = strings.TrimSpace(state)
		return state == "running" || state == "degraded"
	}, 60*time.Second, 100*time.Millisecond, "the container did not finish booting (%s)", state)
	return c
}

func (c *container) logTail() string {
	b, _ := os.ReadFile(c.log)
	return string(b[max(0, len(b)-2000):])
}

// exec runs a command inside the container.
func (c *container) exec(args ...string) (string, int) {
	out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(c.pid1), "-a"}, args...)...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		return err.Error(), -1
	}
	return string(out), 0
}

func (c *container) must(args ...string) string {
	c.t.Helper()
	out, code := c.exec(args...)
	require.Equal(c.t, 0, code, "in the container: %s: %s", strings.Join(args, " "), out)
	return out
}

// show reads systemd properties of a unit.
func (c *container) show(unit string, props ...string) map[string]string {
	out, _ := c.exec("systemctl", "show", unit, "-p", strings.Join(props, ","))
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
			m[k] = v
		}
	}
	return m
}

// agentProcesses lists processes in the container running a ferry-agent.
func (c *container) agentProcesses() string {
	out, _ := c.exec("sh", "-c", `for p in /proc/[0-9]*; do e=$(readlink $p/exe 2>/dev/null) && case $e in *ferry-agent*) echo "${p#/proc/} $e";; esac; done; true`)
	return strings.TrimSpace(out)
}

func (c *container) shutdown() {
	select {
	case <-c.done:
		return
	default:
	}
	c.exec("systemctl", "poweroff")
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		c.nspawn.Process.Kill()
		<-c.done
	}
	if c.t.Failed() {
		c.t.Logf("--- container console ---\n%s", c.logTail())
	}
}

// TestServiceLifecycleSystemd is the installation acceptance cycle under
// real systemd: install (the unit passes systemd-analyze verify, is enabled
// and active) → status → systemd restarts a killed service → restart → a
// newer build installed over it → ferry agents upgrade → uninstall leaves
// nothing but the state, --purge not even that; then the install one-liner
// inside the container.
func TestServiceLifecycleSystemd(t *testing.T) {
	testenv.RequireRoot(t)
	rootfs := debianRootfs(t)
	v1, v2, v3 := agentBuild(t, "e2e-v1"), agentBuild(t, "e2e-v2"), agentBuild(t, "e2e-v3")
	dist := makeDist(t, "e2e-v3", v3)
	c := StartController(t, "--dist", dist)
	bind := t.TempDir()
	for name, src := range map[string]string{"ferry-agent-v1": v1, "ferry-agent-v2": v2} {
		b, err := os.ReadFile(src)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(bind, name), b, 0o755))
	}
	start := time.Now()
	ctr := bootContainer(t, rootfs, bind)
	t.Logf("container booted in %s", time.Since(start).Round(time.Millisecond))
	const unit = "ferry-agent.service"
	const bin = "/usr/local/bin/ferry-agent"

	out := ctr.must("/ferry/ferry-agent-v1", "install", "--controller", c.Addr, "--token", c.Token(), "--name", "sd")
	require.Contains(t, out, "installed the linux-systemd service ferry-agent (/etc/systemd/system/ferry-agent.service)")
	first := c.waitAgentVersion("sd", "e2e-v1", 30*time.Second)

	out, code := ctr.exec("systemd-analyze", "verify", "/etc/systemd/system/"+unit)
	require.Equal(t, 0, code, out)
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		require.NotContains(t, l, unit, "systemd-analyze has a remark on the unit")
	}
	require.Equal(t, "enabled", strings.TrimSpace(ctr.must("systemctl", "is-enabled", unit)))
	props := ctr.show(unit, "ActiveState", "SubState", "MainPID", "ExecStart", "Restart")
	require.Equal(t, "active", props["ActiveState"])
	require.Equal(t, "running", props["SubState"])
	require.Equal(t, "on-failure", props["Restart"])
	require.Contains(t, props["ExecStart"], "argv[]="+bin+" run --config /etc/ferry/ferry-agent.yaml --supervise")
	out = ctr.must(bin, "status")
	require.Regexp(t, `state: +running`, out)
	require.Contains(t, out, "linux-systemd")

	// systemd restarts a service whose main process is killed.
	ctr.must("sh", "-c", "kill -KILL "+props["MainPID"]) // the shell's kill: minbase has no procps
	require.Eventually(t, func() bool {
		p := ctr.show(unit, "ActiveState", "MainPID", "NRestarts")
		return p["ActiveState"] == "active" && p["MainPID"] != props["MainPID"] && p["MainPID"] != "0" && p["NRestarts"] == "1"
	}, 30*time.Second, 100*time.Millisecond, "systemd did not restart the killed service")
	c.waitAgentVersion("sd", "e2e-v1", 30*time.Second)

	before := ctr.show(unit, "MainPID")["MainPID"]
	ctr.must(bin, "restart")
	require.NotEqual(t, before, ctr.show(unit, "MainPID")["MainPID"])
	c.waitAgentVersion("sd", "e2e-v1", 30*time.Second)

	out = ctr.must("/ferry/ferry-agent-v2", "install")
	require.Contains(t, out, "keeping the enrolment as sd ("+first.ID+")")
	require.Equal(t, first.ID, c.waitAgentVersion("sd", "e2e-v2", 30*time.Second).ID)

	res, code := c.upgrade("sd")
	require.Equal(t, 0, code, "%+v", res)
	require.Equal(t, []upgradeResult{{Agent: "sd", FromVersion: "e2e-v2", ToVersion: "e2e-v3", State: "upgraded"}}, res)
	c.waitAgentVersion("sd", "e2e-v3", 30*time.Second)
	require.Equal(t, "e2e-v3", strings.TrimSpace(ctr.must(bin, "version")))

	out = ctr.must(bin, "uninstall")
	require.Contains(t, out, "kept the state directory /var/lib/ferry-agent")
	left := ctr.must("sh", "-c", "ls -d /usr/local/bin/ferry-agent* /etc/ferry /etc/systemd/system/ferry-agent.service "+
		"/etc/systemd/system/multi-user.target.wants/ferry-agent.service /var/lib/ferry-agent 2>/dev/null; true")
	require.Equal(t, "/var/lib/ferry-agent", strings.TrimSpace(left))
	out, _ = ctr.exec("systemctl", "list-unit-files", unit)
	require.Contains(t, out, "0 unit files listed")
	require.Empty(t, ctr.agentProcesses())
	ctr.must("/ferry/ferry-agent-v1", "uninstall", "--purge")
	_, code = ctr.exec("test", "-e", "/var/lib/ferry-agent")
	require.Equal(t, 1, code, "--purge left the state directory")

	// The one-liner under systemd, with the default service name.
	line := strings.SplitN(c.MustFerry("tokens", "create", "--install-command", "--controller", c.Addr), "\n", 2)[0]
	require.NoError(t, os.WriteFile(filepath.Join(dist, hostDistFile()), mustRead(t, v1), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dist, "SHA256SUMS"), []byte(sha256Hex(mustRead(t, v1))+"  "+hostDistFile()+"\n"), 0o644))
	out = ctr.must("sh", "-c", line+" --name sd-oneliner")
	require.Regexp(t, regexp.MustCompile(`installed the linux-systemd service ferry-agent`), out)
	c.waitAgentVersion("sd-oneliner", "e2e-v1", 30*time.Second)
	ctr.must(bin, "uninstall", "--purge")
	require.Empty(t, ctr.agentProcesses())
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
