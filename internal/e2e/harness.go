package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries returns a directory holding ferry and ferry-agent: FERRY_BIN
// when set (make test builds them), else a fresh build shared by the tests.
func Binaries(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("FERRY_BIN"); d != "" {
		return d
	}
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "ferry-e2e-bin")
		if buildErr != nil {
			return
		}
		root := moduleRoot()
		for _, b := range []struct{ name, pkg, cgo string }{{"ferry", "./cmd/ferry", "1"}, {"ferry-agent", "./cmd/ferry-agent", "0"}} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, b.name), b.pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", b.name, err, out)
				return
			}
		}
	})
	require.NoError(t, buildErr)
	return binDir
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Proc is a running Ferry process with its output captured.
type Proc struct {
	t    testing.TB
	cmd  *exec.Cmd
	name string
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func start(t testing.TB, name string, bin string, args ...string) *Proc {
	t.Helper()
	return startIn(t, "", name, bin, args...)
}

// startIn starts a process in network namespace ns ("" for the test's
// own): `ip netns exec` enters it and execs the program, so the pid and
// process group are the program's.
func startIn(t testing.TB, ns, name string, bin string, args ...string) *Proc {
	t.Helper()
	p := &Proc{t: t, name: name, done: make(chan struct{})}
	p.cmd = inNetns(ns, bin, args...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	require.NoError(t, p.cmd.Start())
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	go func() {
		p.cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s", p.name, p.Output())
		}
	})
	return p
}

// Output is everything the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// WaitOutput waits until the output matches re and returns the submatches.
func (p *Proc) WaitOutput(re *regexp.Regexp, timeout time.Duration) []string {
	p.t.Helper()
	var m []string
	require.Eventually(p.t, func() bool {
		m = re.FindStringSubmatch(p.Output())
		return m != nil
	}, timeout, 20*time.Millisecond, "%s never printed %s; output:\n%s", p.name, re, p.Output())
	return m
}

// Kill sends SIGKILL to the process group and waits for it.
func (p *Proc) Kill() {
	if p.cmd.Process == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits.
func (p *Proc) Stop() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.Kill()
	}
}

// Controller is a running `ferry serve`.
type Controller struct {
	t      testing.TB
	Bin    string
	Data   string
	Addr   string // agent port
	Admin  string // admin socket
	Proc   *Proc
	NS     string // network namespace it runs in ("": the test's)
	listen string
	extra  []string
}

var listeningRE = regexp.MustCompile(`listening on (\S+)`)

// StartController runs a controller on a free loopback port.
func StartController(t testing.TB, extra ...string) *Controller {
	t.Helper()
	return startControllerBin(t, Binaries(t), extra...)
}

// startControllerBin is StartController with the ferry of directory bin.
func startControllerBin(t testing.TB, bin string, extra ...string) *Controller {
	t.Helper()
	c := &Controller{t: t, Bin: bin, Data: t.TempDir(), listen: "127.0.0.1:0", extra: extra}
	c.Admin = filepath.Join(c.Data, "admin.sock")
	c.start()
	return c
}

// StartControllerIn runs a controller inside network namespace ns,
// listening on listen (an address of that namespace, port 0 for a free
// one). The admin socket is a file: the CLI reaches it from anywhere.
func StartControllerIn(t testing.TB, ns, listen string, extra ...string) *Controller {
	t.Helper()
	c := &Controller{t: t, Bin: Binaries(t), Data: t.TempDir(), NS: ns, listen: listen, extra: extra}
	c.Admin = filepath.Join(c.Data, "admin.sock")
	c.start()
	return c
}

func (c *Controller) start() {
	args := append([]string{"serve", "--data", c.Data, "--listen", c.listen, "--admin-socket", c.Admin, "--log-level", "debug"}, c.extra...)
	c.Proc = startIn(c.t, c.NS, "controller", filepath.Join(c.Bin, "ferry"), args...)
	m := c.Proc.WaitOutput(listeningRE, 60*time.Second)
	c.Addr = m[1]
	c.listen = c.Addr // a restart keeps the port, as agents expect
}

// Restart kills the controller with SIGKILL and starts it again on the same
// port and data directory.
func (c *Controller) Restart() {
	c.Proc.Kill()
	c.start()
}

// Result is a finished CLI command.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// Ferry runs the CLI against this controller.
func (c *Controller) Ferry(args ...string) Result {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(c.Bin, "ferry"), append([]string{"--admin", c.Admin}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("ferry %s: %v", strings.Join(args, " "), err)
	}
	return Result{Stdout: out.String(), Stderr: errb.String(), Code: code}
}

// MustFerry runs the CLI and requires success.
func (c *Controller) MustFerry(args ...string) string {
	c.t.Helper()
	r := c.Ferry(args...)
	require.Equal(c.t, 0, r.Code, "ferry %s failed: %s%s", strings.Join(args, " "), r.Stdout, r.Stderr)
	return r.Stdout
}

// JSON runs a CLI command with --json and decodes its output.
func (c *Controller) JSON(v any, args ...string) {
	c.t.Helper()
	out := c.MustFerry(append(args, "--json")...)
	require.NoError(c.t, json.Unmarshal([]byte(out), v), "output: %s", out)
}

// Token creates an enrolment token.
func (c *Controller) Token(args ...string) string {
	c.t.Helper()
	return strings.TrimSpace(c.MustFerry(append([]string{"tokens", "create"}, args...)...))
}

// Agent is a running ferry-agent.
type Agent struct {
	t        testing.TB
	Bin      string
	Name     string
	StateDir string
	Proc     *Proc
	NS       string // network namespace it runs in ("": the test's)
	args     []string
}

// EnrollAgent enrols an agent named name (dialling addr: the controller,
// or a proxy in front of it) and starts it.
func EnrollAgent(t testing.TB, c *Controller, addr, name string, runArgs ...string) *Agent {
	t.Helper()
	return EnrollAgentIn(t, c, "", addr, name, runArgs...)
}

// EnrollAgentIn is EnrollAgent with the agent (enrolment and run) inside
// network namespace ns.
func EnrollAgentIn(t testing.TB, c *Controller, ns, addr, name string, runArgs ...string) *Agent {
	t.Helper()
	return enrollAgentBin(t, c, c.Bin, ns, addr, name, runArgs...)
}

// enrollAgentBin is EnrollAgentIn with the ferry-agent of directory bin
// (another build than the controller's: the mixed-version tests).
func enrollAgentBin(t testing.TB, c *Controller, bin, ns, addr, name string, runArgs ...string) *Agent {
	t.Helper()
	a := &Agent{t: t, Bin: bin, Name: name, StateDir: filepath.Join(t.TempDir(), "agent-"+name), NS: ns, args: runArgs}
	enrollAndStart(t, c, a, addr)
	return a
}

// EnrollAgentAt is EnrollAgent with the agent's state directory at
// stateDir (a test that puts it on a filesystem of its own).
func EnrollAgentAt(t testing.TB, c *Controller, stateDir, name string, runArgs ...string) *Agent {
	t.Helper()
	a := &Agent{t: t, Bin: c.Bin, Name: name, StateDir: stateDir, args: runArgs}
	enrollAndStart(t, c, a, c.Addr)
	return a
}

// enrollAndStart enrols a (dialling addr), starts it and waits until the
// controller sees it connected.
func enrollAndStart(t testing.TB, c *Controller, a *Agent, addr string) {
	t.Helper()
	name, ns := a.Name, a.NS
	out, err := inNetns(ns, filepath.Join(a.Bin, "ferry-agent"), "enroll", "--controller", addr, "--token", c.Token(),
		"--name", name, "--state-dir", a.StateDir).CombinedOutput()
	require.NoError(t, err, "enroll: %s", out)
	a.Start()
	require.Eventually(t, func() bool {
		var agents []struct {
			Name      string `json:"name"`
			Connected bool   `json:"connected"`
		}
		c.JSON(&agents, "agents", "list")
		for _, x := range agents {
			if x.Name == name && x.Connected {
				return true
			}
		}
		return false
	}, 30*time.Second, 50*time.Millisecond, "agent %s never connected", name)
}

// WithoutExecDrivers, among EnrollAgent's run arguments, starts the agent
// without --allow-exec-drivers, which the harness otherwise passes (most
// tests drive exec drivers); a test of the refusal uses it.
const WithoutExecDrivers = "\x00without-exec-drivers"

// Start (re)starts the agent process.
func (a *Agent) Start() {
	args := []string{"run", "--state-dir", a.StateDir, "--log-level", "debug"}
	if !slices.Contains(a.args, WithoutExecDrivers) {
		args = append(args, "--allow-exec-drivers")
	}
	for _, x := range a.args {
		if x != WithoutExecDrivers {
			args = append(args, x)
		}
	}
	a.Proc = startIn(a.t, a.NS, "agent "+a.Name, filepath.Join(a.Bin, "ferry-agent"), args...)
}

// Point is a recovery point as `points list --json` prints it.
type Point struct {
	ID          int64     `json:"id"`
	Time        time.Time `json:"time"`
	Consistency string    `json:"consistency"`
	Bytes       int64     `json:"bytes"`
	Name        string    `json:"name"`
	Method      string    `json:"method"`
	Reason      string    `json:"reason"`
}

// Points lists a machine's points.
func (c *Controller) Points(machine string) []Point {
	c.t.Helper()
	var ps []Point
	c.JSON(&ps, "points", "list", machine)
	return ps
}

// WaitPoint waits for a point of machine newer than after (an id) and
// returns it.
func (c *Controller) WaitPoint(machine string, after int64, timeout time.Duration) Point {
	c.t.Helper()
	var got Point
	require.Eventually(c.t, func() bool {
		ps := c.Points(machine)
		if len(ps) > 0 && ps[len(ps)-1].ID > after {
			got = ps[len(ps)-1]
			return true
		}
		return false
	}, timeout, 50*time.Millisecond, "no point of %s after %d", machine, after)
	return got
}

// Export writes a point's disks into a new directory and returns it.
func (c *Controller) Export(machine string, point int64) string {
	c.t.Helper()
	dir := c.t.TempDir()
	c.MustFerry("points", "export", machine, "--point", fmt.Sprint(point), "--out", dir)
	return dir
}

// inNetns prepares a command that runs in network namespace ns, or in the
// test's own when ns is "".
func inNetns(ns, bin string, args ...string) *exec.Cmd {
	if ns == "" {
		return exec.Command(bin, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
}

// execOut runs a program and returns its combined output.
func execOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
