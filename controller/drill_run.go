package controller

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/protocol/msg"
)

// A drill run (docs/drills.md): test failover of the newest point through
// the target's driver (a test failback at home for a machine replicating in
// reverse), wait until the guest is up, probe the booted guest, clean up —
// always. The phases are data: each names what it does and whether a
// failure of it skips the phases after it (cleanup never is skipped).
const (
	phaseStart   = "test-failover"
	phaseWaitUp  = "wait-up"
	phaseProbe   = "probe"
	phaseCleanup = "cleanup"
)

// bootFailures are what firmware and kernels print on the serial console
// when a disk does not boot (SeaBIOS, Linux).
var bootFailures = []string{"No bootable device", "Boot failed: not a bootable disk", "Kernel panic - not syncing"}

// errPreempted is the cause of a drill a disaster cancelled.
var errPreempted = errors.New("preempted")

// drills tracks the drill running on each machine: one at a time per
// machine, and a failover or failback of it cancels it.
type drills struct {
	mu     sync.Mutex
	active map[string]*activeDrill // by machine
}

type activeDrill struct {
	drill  string
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// claim registers a run on a machine; false when one runs already.
func (d *drills) claim(machine, drill string, cancel context.CancelCauseFunc) (*activeDrill, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.active == nil {
		d.active = map[string]*activeDrill{}
	}
	if _, ok := d.active[machine]; ok {
		return nil, false
	}
	a := &activeDrill{drill: drill, cancel: cancel, done: make(chan struct{})}
	d.active[machine] = a
	return a, true
}

func (d *drills) release(machine string, a *activeDrill) {
	d.mu.Lock()
	if d.active[machine] == a {
		delete(d.active, machine)
	}
	d.mu.Unlock()
	close(a.done)
}

func (d *drills) running(drill string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, a := range d.active {
		if a.drill == drill {
			return true
		}
	}
	return false
}

// preempt cancels the drill running on a machine, if any, and waits until
// it has cleaned up; it returns the drill's name ("" when none ran).
func (d *drills) preempt(ctx context.Context, machine, why string) (string, error) {
	d.mu.Lock()
	a := d.active[machine]
	d.mu.Unlock()
	if a == nil {
		return "", nil
	}
	a.cancel(fmt.Errorf("%w: %s", errPreempted, why))
	select {
	case <-a.done:
		return a.drill, nil
	case <-ctx.Done():
		return a.drill, ctx.Err()
	}
}

// drillRun carries one run's report as it is made.
type drillRun struct {
	s     *Server
	d     api.Drill
	r     api.DrillRun
	m     catalog.Machine
	t     api.Target
	agent string // the target agent's id
	set   string // the test machine's disk set
	job   string // the test failover's job
}

// runDrill runs a drill now and returns its report. It refuses (without a
// report) a machine that cannot be drilled now; started, when set, is
// called with the run's first report once it is recorded.
func (s *Server) runDrill(parent context.Context, d api.Drill, started func(api.DrillRun)) (api.DrillRun, error) {
	if d.Plan != "" {
		return api.DrillRun{}, api.Errorf(api.CodeInvalid, "drill %s: drills of recovery plans are not available yet: drill each machine (--machine)", d.Name)
	}
	m, err := s.cat.Machine(parent, d.Machine)
	if err != nil {
		return api.DrillRun{}, apiErr(err)
	}
	if m.State != catalog.StateProtected && m.State != catalog.StateReverseProtected {
		return api.DrillRun{}, api.Errorf(api.CodeFailedPrecondition, "drill %s: machine %s is %s: a drill needs a machine that replicates (protected, or reverse-protected for a failback test)", d.Name, m.Name, m.State)
	}
	timeout := d.Timeout.Std()
	if timeout <= 0 {
		timeout = api.DefaultDrillTimeout
	}
	// The drill's own context: cancelled by a disaster (preempt), bounded
	// by the timeout; the cleanup runs in another one.
	ctx, cancel := context.WithCancelCause(s.runCtx)
	defer cancel(nil)
	ctx, stop := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("the drill's timeout %s passed", timeout))
	defer stop()
	a, ok := s.drills.claim(m.Name, d.Name, cancel)
	if !ok {
		return api.DrillRun{}, api.Errorf(api.CodeBusy, "machine %s: a drill runs on it already", m.Name)
	}
	defer s.drills.release(m.Name, a)
	run := &drillRun{s: s, d: d, m: m, r: api.DrillRun{Drill: d.Name, Machine: m.Name, Started: s.now(), Result: api.DrillRunning, Phases: []api.DrillPhase{}}}
	if run.r.ID, err = s.cat.PutDrillRun(parent, run.r); err != nil {
		return api.DrillRun{}, err
	}
	if started != nil {
		started(run.r)
	}
	failed := run.phase(ctx, phaseStart, run.start)
	if !failed {
		failed = run.phase(ctx, phaseWaitUp, run.waitUp)
	}
	if !failed {
		failed = run.phase(ctx, phaseProbe, run.probe)
	}
	// The console tail is kept whatever happened: a guest that did not
	// boot says why there.
	if run.set != "" {
		run.consoleTail()
	}
	cctx, ccancel := context.WithTimeout(s.runCtx, 10*time.Minute)
	defer ccancel()
	cleanupFailed := run.phase(cctx, phaseCleanup, run.cleanup)
	now := s.now()
	run.r.Ended = &now
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errPreempted):
		run.r.Result = api.DrillCancelled
		run.r.Error = cause.Error()
	case failed || cleanupFailed:
		run.r.Result = api.DrillFailed
	default:
		run.r.Result = api.DrillPassed
	}
	if run.r.Error == "" && run.r.Result == api.DrillFailed {
		for _, p := range run.r.Phases {
			if p.Result == "failed" {
				run.r.Error = p.Name + ": " + p.Detail
				break
			}
		}
	}
	id, err := s.cat.PutDrillRun(cctx, run.r)
	if err != nil {
		return run.r, err
	}
	if run.r.ID == 0 {
		run.r.ID = id
	}
	s.alertDrillEnded(run.r)
	s.log.Info("drill ended", "drill", d.Name, "machine", m.Name, "point", run.r.Point, "result", run.r.Result, "err", run.r.Error)
	return run.r, nil
}

// phase runs one phase, records its time and outcome, and reports whether
// it failed.
func (run *drillRun) phase(ctx context.Context, name string, fn func(context.Context) (string, error)) bool {
	p := api.DrillPhase{Name: name, Started: run.s.now()}
	detail, err := fn(ctx)
	if err != nil && ctx.Err() != nil && !strings.Contains(err.Error(), context.Cause(ctx).Error()) {
		err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
	}
	p.Seconds = run.s.now().Sub(p.Started).Seconds()
	p.Result, p.Detail = "ok", detail
	if err != nil {
		p.Result, p.Detail = "failed", err.Error()
	}
	run.r.Phases = append(run.r.Phases, p)
	_, _ = run.s.cat.PutDrillRun(context.WithoutCancel(ctx), run.r)
	return err != nil
}

// waitJob follows a job until it ends; when ctx ends first it cancels the
// job and waits for its rollback.
func (s *Server) waitJob(ctx context.Context, id string) (api.Job, error) {
	cancelled := false
	for {
		j, err := s.jobs.Get(context.WithoutCancel(ctx), id)
		if err != nil {
			return j, err
		}
		if api.Terminal(j.State) {
			return j, nil
		}
		if ctx.Err() != nil && !cancelled {
			if _, err := s.jobs.Cancel(context.WithoutCancel(ctx), id); err == nil {
				cancelled = true
			}
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-s.runCtx.Done():
			return j, s.runCtx.Err()
		}
	}
}

// followJob follows a job until it ends or ctx ends (the job runs on).
func (s *Server) followJob(ctx context.Context, id string) (api.Job, error) {
	for {
		j, err := s.jobs.Get(context.WithoutCancel(ctx), id)
		if err != nil || api.Terminal(j.State) {
			return j, err
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return j, ctx.Err()
		}
	}
}

// start test-fails the newest point over (or test-fails back at home).
func (run *drillRun) start(ctx context.Context) (string, error) {
	s := run.s
	var j api.Job
	var err error
	if run.m.State == catalog.StateReverseProtected {
		j, err = s.Failback(ctx, api.MachineActionRequest{Machine: run.m.Name, Test: true})
	} else {
		j, err = s.Failover(ctx, api.FailoverRequest{Machine: run.m.Name, Test: true, Target: run.d.Target})
	}
	if err != nil {
		return "", err
	}
	run.job = j.ID
	run.r.Jobs = append(run.r.Jobs, j.ID)
	j, err = s.waitJob(ctx, j.ID)
	if err != nil {
		return "", err
	}
	for _, jm := range j.Machines {
		run.r.Point = jm.PointID
	}
	m, merr := s.cat.Machine(context.WithoutCancel(ctx), run.m.Name)
	if merr == nil && m.State == catalog.StateTestFailedBack {
		// A failback test runs at home through the home driver: up once
		// started (or --port), the probe runs on the controller.
		run.t, run.agent = api.Target{Name: "home"}, m.AgentID
	}
	if merr == nil && m.Failover != nil {
		run.set = m.Failover.Set
		if run.r.Point == 0 {
			run.r.Point = m.Failover.PointID
		}
		if t, agentID, terr := s.cat.Target(ctx, m.Failover.Target); terr == nil {
			run.t, run.agent = t, agentID
		}
	}
	if j.State != api.JobSucceeded {
		return "", fmt.Errorf("job %s %s: %s", j.ID, j.State, j.Error)
	}
	if run.agent == "" {
		return "", fmt.Errorf("job %s left no test machine to drill (machine %s is %s)", j.ID, run.m.Name, m.State)
	}
	return fmt.Sprintf("job %s started point %d as a test machine on target %s", j.ID, run.r.Point, run.t.Name), nil
}

// ref is the test machine's disk set at the target.
func (run *drillRun) ref() msg.TargetRef {
	return msg.TargetRef{Dir: run.t.Dir, Machine: run.m.Name, Set: run.set}
}

// addr is the guest's address on the (test) network: the first --ip given
// at protect, without its prefix; "" when none was.
func (run *drillRun) addr() string {
	for _, ip := range run.m.Spec.IPs {
		a, _, _ := strings.Cut(ip.Address, "/")
		return a
	}
	return ""
}

// waitUp waits for the guest: a TCP port of its address when the drill
// names one, else the boot marker on the serial console of a driver that
// logs one; an exec target is up once its start command succeeded.
func (run *drillRun) waitUp(ctx context.Context) (string, error) {
	s := run.s
	marker := run.d.UpMarker
	if marker == "" {
		marker = api.DefaultDrillUpMarker
	}
	for {
		switch {
		case run.d.Port > 0:
			if run.addr() == "" {
				return "", fmt.Errorf("--port %d: machine %s has no address (protect --ip)", run.d.Port, run.m.Name)
			}
			resp, err := run.runProbe(ctx, msg.DrillProbeRequest{Addr: run.addr(), Port: run.d.Port, Timeout: 5 * time.Second})
			if err == nil && resp.ExitCode == 0 {
				return resp.Output, nil
			}
		case !run.t.MapsNetworks():
			return "an exec target: up when its start command succeeded", nil
		default:
			var resp msg.DrillConsoleResponse
			err := s.agents.call(ctx, run.agent, run.t.Name, msg.MethodDrillConsole, msg.DrillConsoleRequest{Ref: run.ref(), Marker: marker}, &resp)
			if err == nil && resp.Found {
				return fmt.Sprintf("%q on the serial console", marker), nil
			}
			// A guest that cannot boot says so on the console: the drill
			// fails then rather than at its timeout.
			for _, f := range bootFailures {
				if err == nil && strings.Contains(resp.Tail, f) {
					return "", fmt.Errorf("the guest did not boot: %q on the serial console", f)
				}
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the guest did not come up: %w", context.Cause(ctx))
		case <-time.After(time.Second):
		}
	}
}

// probe runs the drill's probe against the booted guest.
func (run *drillRun) probe(ctx context.Context) (string, error) {
	if run.d.Probe == "" {
		return "no probe: up is enough", nil
	}
	env := map[string]string{"FERRY_DRILL": run.d.Name, "FERRY_MACHINE": run.m.Name, "FERRY_POINT": strconv.FormatInt(run.r.Point, 10),
		"FERRY_TARGET": run.t.Name, "FERRY_JOB": run.job, "FERRY_SET": run.set, "FERRY_TEST": "1"}
	if a := run.addr(); a != "" {
		env["FERRY_ADDR"] = a
	}
	timeout := time.Minute
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	req := msg.DrillProbeRequest{Command: run.d.Probe, Env: env, Timeout: timeout}
	if run.t.MapsNetworks() {
		ref := run.ref()
		req.Ref = &ref
	}
	resp, err := run.runProbe(ctx, req)
	run.r.ProbeOutput = resp.Output
	if err != nil {
		return "", err
	}
	if resp.ExitCode != 0 {
		return "", fmt.Errorf("the probe exited %d: %s", resp.ExitCode, lastLine(resp.Output))
	}
	return "exit 0", nil
}

// runProbe runs a probe on the recovery host's agent, or on the controller
// for an exec target (its commands run wherever the target agent is, and
// the guest's network is the site's; docs/drills.md).
func (run *drillRun) runProbe(ctx context.Context, req msg.DrillProbeRequest) (msg.DrillProbeResponse, error) {
	if !run.t.MapsNetworks() {
		return localProbe(ctx, req), nil
	}
	var resp msg.DrillProbeResponse
	err := run.s.agents.call(ctx, run.agent, run.t.Name, msg.MethodDrillProbe, req, &resp)
	return resp, err
}

// consoleTail keeps the end of the test machine's console in the report.
func (run *drillRun) consoleTail() {
	if !run.t.MapsNetworks() || run.agent == "" {
		return
	}
	ctx, cancel := context.WithTimeout(run.s.runCtx, 10*time.Second)
	defer cancel()
	var resp msg.DrillConsoleResponse
	if err := run.s.agents.call(ctx, run.agent, run.t.Name, msg.MethodDrillConsole, msg.DrillConsoleRequest{Ref: run.ref()}, &resp); err == nil {
		run.r.ConsoleTail = resp.Tail
	}
}

// cleanup ends the test machine whatever happened before: the test job's
// own rollback handles a cancelled or failed start; a test machine left
// running is cleaned up here.
func (run *drillRun) cleanup(ctx context.Context) (string, error) {
	s := run.s
	if run.job == "" {
		return "nothing started, nothing to clean up", nil
	}
	if _, err := s.waitJob(ctx, run.job); err != nil {
		return "", err
	}
	m, err := s.cat.Machine(ctx, run.m.Name)
	if err != nil {
		return "", err
	}
	if m.State != catalog.StateTestFailedOver && m.State != catalog.StateTestFailedBack {
		return "nothing left to clean up", nil
	}
	if m.Failover != nil && m.Failover.Job != run.job {
		return "", fmt.Errorf("machine %s runs test failover %s, not the drill's", m.Name, m.Failover.Job)
	}
	j, err := s.Cleanup(ctx, api.MachineActionRequest{Machine: m.Name})
	if err != nil {
		return "", err
	}
	run.r.Jobs = append(run.r.Jobs, j.ID)
	if j, err = s.waitJob(ctx, j.ID); err != nil {
		return "", err
	}
	if j.State != api.JobSucceeded {
		return "", fmt.Errorf("cleanup job %s %s: %s", j.ID, j.State, j.Error)
	}
	return "job " + j.ID, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// dialGuest is a TCP connect to the guest (an exec target's port wait).
func dialGuest(ctx context.Context, addr string, port int, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(addr, strconv.Itoa(port)))
	if err == nil {
		c.Close()
	}
	return err
}
