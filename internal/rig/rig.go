package rig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/controller"
	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/internal/syncbuf"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Timeout bounds every wait of the rig.
const Timeout = 2 * time.Minute

// Controller is a controller running in this process. Stop and Start
// keep its data directory, agent port and admin socket.
type Controller struct {
	t    testing.TB
	Data string
	// Addr is the agent port (HOST:PORT), fixed after the first start.
	Addr string
	// Socket is the admin socket.
	Socket string
	// Admin is the admin API client, valid across restarts.
	Admin *admin.Client
	// Hooks are given to the controller at each Start.
	Hooks jobs.Hooks
	// Log holds every log line of the controller and the agents.
	Log *syncbuf.Buffer

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan error
}

// NewController starts a controller on a free loopback port with a fresh
// data directory; it is stopped when the test ends.
func NewController(t testing.TB, hooks jobs.Hooks) *Controller {
	t.Helper()
	// A Unix socket path is at most 108 bytes: t.TempDir() under a long
	// subtest name is too long for it.
	sockDir, err := os.MkdirTemp("", "ferry-rig-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	c := &Controller{t: t, Data: t.TempDir(), Addr: "127.0.0.1:0", Socket: filepath.Join(sockDir, "admin.sock"),
		Hooks: hooks, Log: &syncbuf.Buffer{}}
	c.Admin, err = admin.NewClient(admin.ClientConfig{Address: c.Socket})
	require.NoError(t, err)
	t.Cleanup(func() {
		c.SetT(t)
		c.Stop()
		if t.Failed() {
			t.Logf("--- rig log ---\n%s", tail(c.Log.String(), 400))
		}
	})
	c.Start()
	return c
}

// SetT makes the rig report to t from now on: cases that share one rig run
// as subtests, one after another, each calling SetT first.
func (c *Controller) SetT(t testing.TB) { c.t = t }

// Logger is a logger writing to the rig's log.
func (c *Controller) Logger(component string) *slog.Logger {
	return slog.New(slog.NewTextHandler(c.Log, &slog.HandlerOptions{Level: slog.LevelDebug})).With("rig", component)
}

// Start runs the controller until Stop; it returns once it listens.
func (c *Controller) Start() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	require.Nil(c.t, c.cancel, "controller already running")
	cfg := controller.DefaultConfig()
	cfg.DataDir, cfg.Listen, cfg.AdminSocket = c.Data, c.Addr, c.Socket
	cfg.Logger = c.Logger("controller")
	cfg.Hooks = c.Hooks
	ready := make(chan string, 1)
	cfg.OnReady = func(agentAddr, _ string) { ready <- agentAddr }
	srv, err := controller.New(cfg)
	require.NoError(c.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case addr := <-ready:
		c.Addr = addr
	case err := <-done:
		cancel()
		require.NoError(c.t, err, "controller did not start")
		require.Fail(c.t, "controller ended before it was ready")
	case <-time.After(Timeout):
		cancel()
		require.Fail(c.t, "controller not ready in time")
	}
	c.cancel, c.done = cancel, done
}

// Stop ends the controller (its context ends, as on SIGTERM) and waits
// for Run to return.
func (c *Controller) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel == nil {
		return
	}
	c.cancel()
	select {
	case err := <-c.done:
		if err != nil {
			c.t.Errorf("controller ended with %v", err)
		}
	case <-time.After(Timeout):
		c.t.Errorf("controller did not stop within %s", Timeout)
	}
	c.cancel, c.done = nil, nil
}

// Restart stops the controller and starts it again on the same data.
func (c *Controller) Restart() {
	c.t.Helper()
	c.Stop()
	c.Start()
}

// Running reports whether the controller runs.
func (c *Controller) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cancel != nil
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), Timeout)
}

// Agent is an agent running in this process.
type Agent struct {
	c        *Controller
	Name     string
	StateDir string

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan error
}

// Enroll creates a one-use token, enrols an agent named name with it,
// starts the agent and waits until the controller sees it connected. The
// agent allows exec driver commands and plan scripts (most tests drive
// them); EnrollWith chooses.
func (c *Controller) Enroll(name string) *Agent {
	c.t.Helper()
	return c.EnrollWith(name, msg.Permissions{PlanScripts: true, ExecDrivers: true})
}

// EnrollWith is Enroll with what the agent allows recorded at enrolment.
func (c *Controller) EnrollWith(name string, allow msg.Permissions) *Agent {
	c.t.Helper()
	cx, cancel := ctx()
	defer cancel()
	tok, err := c.Admin.CreateToken(cx, api.CreateTokenRequest{TTL: api.Duration(time.Hour), Uses: 1})
	require.NoError(c.t, err)
	a := &Agent{c: c, Name: name, StateDir: filepath.Join(c.t.TempDir(), "agent-"+name)}
	_, err = agent.Enroll(cx, agent.EnrollConfig{Controller: c.Addr, Token: tok.Token, Name: name, StateDir: a.StateDir,
		Logger: c.Logger("enroll " + name), Allow: allow})
	require.NoError(c.t, err, "enrol %s", name)
	t := c.t
	c.t.Cleanup(func() { a.stop(t) })
	a.Start()
	return a
}

// Start runs the agent and waits until the controller lists it connected
// (when the controller runs).
func (a *Agent) Start() {
	a.c.t.Helper()
	a.mu.Lock()
	require.Nil(a.c.t, a.cancel, "agent %s already running", a.Name)
	cfg := agent.DefaultConfig()
	cfg.StateDir, cfg.Logger, cfg.MaxBackoff = a.StateDir, a.c.Logger("agent "+a.Name), time.Second
	ag, err := agent.New(cfg)
	require.NoError(a.c.t, err)
	cx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(cx) }()
	a.cancel, a.done = cancel, done
	a.mu.Unlock()
	if a.c.Running() {
		a.c.WaitConnected(a.Name)
	}
}

// Stop ends the agent and waits for it.
func (a *Agent) Stop() { a.stop(a.c.t) }

func (a *Agent) stop(t testing.TB) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cancel == nil {
		return
	}
	a.cancel()
	select {
	case err := <-a.done:
		if err != nil {
			t.Errorf("agent %s ended with %v", a.Name, err)
		}
	case <-time.After(Timeout):
		t.Errorf("agent %s did not stop within %s", a.Name, Timeout)
	}
	a.cancel, a.done = nil, nil
}

// WaitConnected waits until the controller lists agent name connected.
func (c *Controller) WaitConnected(name string) {
	c.t.Helper()
	require.Eventually(c.t, func() bool {
		cx, cancel := ctx()
		defer cancel()
		as, err := c.Admin.Agents(cx)
		if err != nil {
			return false
		}
		for _, a := range as {
			if a.Name == name && a.Connected {
				return true
			}
		}
		return false
	}, Timeout, 20*time.Millisecond, "agent %s never connected", name)
}

// Site is a recovery site: an agent, a target directory and a fake
// hypervisor driven by the exec driver.
type Site struct {
	Name  string
	Agent *Agent
	Dir   string
	Hyp   *Hypervisor
}

// AddSite enrols an agent NAME-agent and adds target NAME on it.
func (c *Controller) AddSite(name string) *Site {
	c.t.Helper()
	s := &Site{Name: name, Dir: c.t.TempDir(), Hyp: NewHypervisor(c.t)}
	s.Agent = c.Enroll(name + "-agent")
	cx, cancel := ctx()
	defer cancel()
	_, err := c.Admin.AddTarget(cx, api.Target{Name: name, Agent: s.Agent.Name, Dir: s.Dir, Driver: "exec", Exec: s.Hyp.Driver()})
	require.NoError(c.t, err)
	return s
}

// SetState is the state of one disk set at a site (state.json).
type SetState struct {
	Point    int64 `json:"point"`
	MovingTo int64 `json:"moving_to"`
	Written  bool  `json:"written"`
}

// Set reads a machine's disk set state; ok is false when there is none.
func (s *Site) Set(machine, set string) (SetState, bool) {
	b, err := os.ReadFile(filepath.Join(s.Dir, machine, set, "state.json"))
	if err != nil {
		return SetState{}, false
	}
	var st SetState
	return st, json.Unmarshal(b, &st) == nil
}

// SetDisk is the path of a disk of a set.
func (s *Site) SetDisk(machine, set, disk string) string {
	return filepath.Join(s.Dir, machine, set, disk+".raw")
}

// WaitStaged waits until a machine's staged set holds point or a newer
// one, with no move in progress.
func (s *Site) WaitStaged(t testing.TB, machine string, point int64) {
	t.Helper()
	require.Eventually(t, func() bool {
		st, ok := s.Set(machine, "staged")
		return ok && st.Point >= point && st.MovingTo == 0
	}, Timeout, 20*time.Millisecond, "machine %s never staged at point %d", machine, point)
}

// Files lists every file under the site's directory (relative paths).
func (s *Site) Files(t testing.TB) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(s.Dir, func(p string, info os.FileInfo, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // renamed or removed while walked (an atomic write)
		}
		if err == nil && !info.IsDir() {
			rel, _ := filepath.Rel(s.Dir, p)
			out = append(out, rel)
		}
		return err
	})
	require.NoError(t, err)
	return out
}

// CreatePolicy creates a policy making a point every `every` (the initial
// sync makes the first point whatever the interval).
func (c *Controller) CreatePolicy(name string, every time.Duration) {
	c.t.Helper()
	cx, cancel := ctx()
	defer cancel()
	p := api.DefaultPolicy(name)
	p.RPEvery = api.Duration(every)
	_, err := c.Admin.CreatePolicy(cx, p)
	require.NoError(c.t, err)
}

// Protect protects a machine and waits for its first point; when site is
// not nil it also waits until the point is staged there.
func (c *Controller) Protect(req api.ProtectRequest, site *Site) api.Point {
	c.t.Helper()
	c.WaitConnected(req.Agent) // e.g. still reconnecting after a restart
	cx, cancel := ctx()
	defer cancel()
	_, err := c.Admin.Protect(cx, req)
	require.NoError(c.t, err)
	p := c.WaitPoint(req.Machine, 0)
	if site != nil {
		site.WaitStaged(c.t, req.Machine, p.ID)
	}
	return p
}

// Points lists a machine's points.
func (c *Controller) Points(machine string) []api.Point {
	c.t.Helper()
	cx, cancel := ctx()
	defer cancel()
	ps, err := c.Admin.Points(cx, machine)
	require.NoError(c.t, err)
	return ps
}

// WaitPoint waits for a point of machine newer than after (an id).
func (c *Controller) WaitPoint(machine string, after int64) api.Point {
	c.t.Helper()
	var got api.Point
	require.Eventually(c.t, func() bool {
		cx, cancel := ctx()
		defer cancel()
		ps, err := c.Admin.Points(cx, machine)
		if err != nil || len(ps) == 0 || ps[len(ps)-1].ID <= after {
			return false
		}
		got = ps[len(ps)-1]
		return true
	}, Timeout, 20*time.Millisecond, "no point of %s after %d", machine, after)
	return got
}

// Machine returns a machine as `machines show` sees it.
func (c *Controller) Machine(name string) api.Machine {
	c.t.Helper()
	cx, cancel := ctx()
	defer cancel()
	m, err := c.Admin.Machine(cx, name)
	require.NoError(c.t, err)
	return m
}

// Job returns a job as `jobs show` sees it.
func (c *Controller) Job(id string) api.Job {
	c.t.Helper()
	cx, cancel := ctx()
	defer cancel()
	j, err := c.Admin.Job(cx, id)
	require.NoError(c.t, err)
	return j
}

// WaitJob waits until a job ends and returns it. It polls (a watch
// would end with the controller when a test restarts it).
func (c *Controller) WaitJob(id string) api.Job {
	c.t.Helper()
	var j api.Job
	require.Eventually(c.t, func() bool {
		cx, cancel := ctx()
		defer cancel()
		var err error
		j, err = c.Admin.Job(cx, id)
		return err == nil && api.Terminal(j.State)
	}, Timeout, 20*time.Millisecond, "job %s did not end", id)
	return j
}

// Verb is a job-starting admin action.
type Verb string

// The job-starting verbs (the admin API's machine actions).
const (
	VerbFailover    Verb = "failover" // with FailoverRequest's Test/Planned
	VerbCleanup     Verb = "cleanup"
	VerbCommit      Verb = "commit"
	VerbChangePoint Verb = "change-point"
)

// StartFailover starts a failover-family job and returns it at once.
func (c *Controller) StartFailover(req api.FailoverRequest) (api.Job, error) {
	cx, cancel := ctx()
	defer cancel()
	return c.Admin.Failover(cx, req)
}

// StartAction starts cleanup, commit or change-point and returns at once.
func (c *Controller) StartAction(verb Verb, req api.MachineActionRequest) (api.Job, error) {
	cx, cancel := ctx()
	defer cancel()
	return c.Admin.MachineAction(cx, string(verb), req)
}

// Cancel asks a job to stop.
func (c *Controller) Cancel(id string) (api.Job, error) {
	cx, cancel := ctx()
	defer cancel()
	return c.Admin.CancelJob(cx, id)
}

// StepState is a named step's state in a job, "absent" when it has none.
func StepState(j api.Job, step string) string {
	for _, s := range j.Steps {
		if s.Name == step {
			return s.State
		}
	}
	return "absent"
}

// StepNames lists a job's steps, as `jobs show` reports them.
func StepNames(j api.Job) []string {
	out := make([]string, len(j.Steps))
	for i, s := range j.Steps {
		out[i] = s.Name
	}
	return out
}

// ErrInjected is what a test's BeforeStep hook returns to fail a step.
var ErrInjected = errors.New("rig: injected step failure")

func tail(s string, lines int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = append([]string{fmt.Sprintf("... %d lines before", len(ls)-lines)}, ls[len(ls)-lines:]...)
	}
	return strings.Join(ls, "\n")
}
