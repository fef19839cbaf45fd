package failover

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// The failback test (docs/failover.md "Testing a failback"): while a
// machine runs at its recovery site and replicates home, `ferry failback M
// --test` takes a fresh reverse point, clones the home disks into the
// test directory given at re-protect (reflink where that directory shares
// the home disks' filesystem, else a sparse copy), moves the clone (not
// the home disks) to that point and starts it through the home driver
// with FERRY_TEST=1, under the name M-test. Nothing is stopped: the machine at
// the recovery site runs on, its replication home goes on, and the home
// disks themselves are only read. `ferry cleanup M` stops the test copy
// and removes the clone.

// checkTestDir checks a --test-dir given at re-protect.
func checkTestDir(dir string) error {
	if dir != "" && !filepath.IsAbs(dir) {
		return refuse("--test-dir %q is not an absolute path (a directory at the home site)", dir)
	}
	return nil
}

// homeTestDriver runs the home driver for the failback test's copy: the
// name the driver knows it by is M-test, FERRY_TEST=1, and FERRY_DISKS
// names the clone's files (never the home disks).
func (j *job) homeTestDriver(ctx context.Context, m catalog.Machine, test *catalog.HomeTest, action string) (msg.DriverResponse, error) {
	var resp msg.DriverResponse
	ctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()
	err := j.e.Agents.Call(ctx, m.AgentID, msg.MethodTargetDriver, msg.TargetDriverRequest{
		Machine: test.Name, Action: action, Commands: msg.Driver(m.Spec.Driver), Hypervisor: homeTestHypervisor(m, test),
		Env: map[string]string{"FERRY_JOB": j.r.ID(), "FERRY_KIND": j.r.Kind(), "FERRY_MACHINE": test.Name,
			"FERRY_DISKS": strings.Join(test.Paths, "\n"), "FERRY_TEST": "1", "FERRY_SET": test.Set},
		// The agent marks the clone written before a start.
		Ref: &msg.TargetRef{Dir: m.RoundTrip.TestDir, Machine: m.Name, Set: test.Set}}, &resp)
	return resp, err
}

// prepareTestFailback is the failback test's prerequisites: a machine
// replicating home, a test directory recorded at re-protect, a home driver
// that can start the copy, and the home agent.
func prepareTestFailback(ctx context.Context, j *job, name string, md *machineData) error {
	m, _, err := j.replicatingHome(ctx, name, md, func(m catalog.Machine) bool {
		return m.RoundTrip != nil && m.RoundTrip.Test != nil && m.RoundTrip.Test.Job == j.r.ID()
	})
	if err != nil {
		return err
	}
	if m.RoundTrip.TestDir == "" {
		return refuse("machine %s: a failback test starts a clone of the home disks in the test directory given at re-protect, and its re-protect gave none (ferry reprotect %s --test-dir DIR)", name, name)
	}
	if !homeStartable(m) {
		return refuse("machine %s has no start command at home (protect with --start): a failback test starts its clone through the home driver", name)
	}
	md.SourceAgent, md.HomeDir, md.Dir = m.AgentID, m.RoundTrip.HomeDir, m.RoundTrip.TestDir
	md.Set, md.DriverName = j.def.set(j.r.ID()), j.def.driverName(name)
	if md.FromState == "" {
		md.FromState = m.State
	}
	// The recovery agent is the reverse replication's source: one seen
	// here is waited for (latest's grace) when the test's cycle is asked.
	md.SourceSeen = md.SourceSeen || j.e.Agents.Connected(md.TargetAgent)
	if !j.e.Agents.Connected(md.SourceAgent) {
		return unavailable("the home agent of %s is not connected", name)
	}
	if j.e.Repo.Encrypted() {
		held, err := j.e.agentKey(ctx, md.SourceAgent, md.HomeDir, name)
		if err != nil {
			return err
		}
		if want := j.e.Repo.PublicKey().Fingerprint(); held != want {
			return refuse("machine %s: the repository is encrypted and the home agent holds no key of it (fingerprint %.16s…): install it there (ferry-agent key install)", name, want)
		}
	}
	j.r.SetMachine(name, "prepared", 0, nil)
	return nil
}

// reverseTestPoint takes a fresh cycle at the recovery site (the machine
// runs on: its view is as consistent as any cycle's), so the test runs
// the newest writes; with the recovery agent away (after latest's grace
// when it is expected back), the newest stored point.
func reverseTestPoint(ctx context.Context, j *job, name string, md *machineData) error {
	if md.Point != 0 {
		return nil
	}
	reached := j.e.Agents.Connected(md.TargetAgent)
	if !reached {
		until, _ := j.agentGrace(ctx, md.TargetAgent, md.SourceSeen)
		if d := j.r.Deadline(); !d.IsZero() && d.Before(until) {
			until = d
		}
		if !until.IsZero() {
			ok, err := j.waitAgent(ctx, md.TargetAgent, until, true)
			if err != nil {
				return err
			}
			reached = ok
		}
	}
	if reached {
		var resp msg.CycleNowResponse
		cctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
		defer cancel()
		err := j.e.Agents.Call(cctx, md.TargetAgent, msg.MethodCycleNow, msg.CycleNowRequest{Machine: name}, &resp)
		if err == nil {
			md.Point = resp.PointID
			j.r.MachineNote(name, fmt.Sprintf("the recovery site made point %d for the test (the machine runs on there)", md.Point))
			return nil
		}
		if jobs.IsRetryable(err) {
			return err
		}
		j.r.Note("%s: no fresh cycle at the recovery site (%v); the test runs the newest stored point", name, err)
	} else {
		j.r.Note("%s: the recovery site is not connected; the test runs the newest stored point", name)
	}
	pts, err := j.e.Repo.Points(ctx, name)
	if err != nil {
		return err
	}
	if len(pts) == 0 {
		return refuse("machine %s has no point to test", name)
	}
	md.Point = pts[len(pts)-1].ID
	return nil
}

// cloneHome has the home agent clone the home disks into the test
// directory, and records the clone in the machine's round trip before
// anything starts it (a cleanup then always finds it).
func cloneHome(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if test := m.RoundTrip.Test; test != nil && test.Job == j.r.ID() {
		return nil
	}
	unlock := j.e.lockMoves(name)
	defer unlock()
	var resp msg.TargetCloneResponse
	err = j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodTargetCloneHome, msg.TargetCloneHomeRequest{
		Ref: md.homeRef(name), ToDir: md.Dir, To: md.Set}, &resp)
	if errors.Is(err, protocol.ErrExists) {
		// An earlier attempt cloned, then the controller stopped before
		// recording it: that clone may be of another point. Start again.
		if rerr := j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodTargetRemove, msg.TargetRef{Dir: md.Dir, Machine: name, Set: md.Set}, &struct{}{}); rerr != nil {
			return rerr
		}
		err = j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodTargetCloneHome, msg.TargetCloneHomeRequest{
			Ref: md.homeRef(name), ToDir: md.Dir, To: md.Set}, &resp)
	}
	if err != nil {
		return agentErr(err, "machine %s: cloning the home disks into %s", name, md.Dir)
	}
	if resp.Reflinked {
		j.r.Note("%s: the test disks are reflink clones of the home disks in %s", name, md.Dir)
	} else {
		j.r.Note("%s: the test disks were copied from the home disks (%d bytes; no reflink from the home disks into %s)", name, resp.Bytes, md.Dir)
	}
	m.RoundTrip.Test = &catalog.HomeTest{Job: j.r.ID(), Name: md.DriverName, Set: md.Set, Paths: resp.Paths, Point: md.Point}
	return j.e.Cat.UpdateMachine(ctx, m)
}

// moveHomeClone moves the clone, in place, from the home disks' point
// to the test's point: only blocks that differ are written, into the
// clone (the home disks are not touched).
func moveHomeClone(ctx context.Context, j *job, name string, md *machineData) error {
	if md.Started {
		return nil // moved before this job started the copy (a re-run after a restart)
	}
	unlock := j.e.lockMoves(name)
	defer unlock()
	var st msg.TargetStatusResponse
	if err := j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: md.Dir, Machine: name}, &st); err != nil {
		return err
	}
	cur, ok := st.Sets[md.Set]
	if !ok {
		return refuse("the home agent keeps no clone %s of %s in %s", md.Set, name, md.Dir)
	}
	if cur.Point == md.Point && cur.MovingTo == 0 && !cur.Written {
		return nil
	}
	if cur.Written {
		return refuse("the clone %s of %s was written before it was moved to point %d: run the test again", md.Set, name, md.Point)
	}
	start := time.Now()
	res, err := j.e.move(ctx, Move{AgentID: md.SourceAgent, Ref: msg.TargetRef{Dir: md.Dir, Machine: name, Set: md.Set}, Machine: name,
		SetPoint: cur.Point, From: cur.Point, MovingTo: cur.MovingTo, To: md.Point, JobID: j.r.ID(), Progress: j.r.Progress})
	if err != nil {
		return err
	}
	j.r.Note("%s: test disks: %d blocks (%d bytes) and %d zero blocks rewritten from point %d to %d in %s", name, res.Blocks, res.Bytes, res.ZeroBlocks, cur.Point, md.Point, time.Since(start).Round(time.Millisecond))
	j.r.SetMachine(name, "moved", md.Point, nil)
	return nil
}

// startHomeTest starts the clone through the home driver and records the
// state the lifecycle table gives (test-failed-back).
func startHomeTest(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	test := m.RoundTrip.Test
	if test == nil || test.Job != j.r.ID() {
		return refuse("machine %s records no clone of this job", name)
	}
	running := func() (string, error) {
		r, err := j.homeTestDriver(ctx, m, test, "status")
		return r.Status, err
	}
	if !j.e.Agents.Connected(m.AgentID) {
		return unavailable("the home agent of %s is not connected", name)
	}
	hasStatus := homeStatus(m)
	if err := j.startOnce(ctx, md, name, hasStatus, func(action string) (string, error) {
		r, err := j.homeTestDriver(ctx, m, test, action)
		return r.Status, err
	}); err != nil {
		return agentErr(err, "the home driver could not start the test copy %s", test.Name)
	}
	if hasStatus {
		if s, err := waitStatus(ctx, running, func(s string) bool { return s == "running" }); err != nil {
			return refuse("the test copy %s did not report running at home (%s): %w", test.Name, s, err)
		}
	} else {
		j.r.Note("%s: the home driver has no status command; the test copy started when start returned", name)
	}
	if m, err = j.machine(ctx, name); err != nil {
		return err
	}
	if err := j.advance(&m); err != nil {
		return err
	}
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	j.r.SetMachine(name, "running", md.Point, nil)
	return nil
}

// undoTestFailback ends a failback test that did not complete: the copy
// is stopped if this job asked for its start, and the clone removed; the
// machine stays reverse-protected.
func undoTestFailback(ctx context.Context, j *job, name string, md *machineData) {
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil || m.RoundTrip == nil || m.RoundTrip.Test == nil || m.RoundTrip.Test.Job != j.r.ID() {
		return
	}
	if m.State == md.FromState || md.FromState == "" {
		if err := j.endHomeTest(ctx, m); err != nil {
			j.r.Note("%s: the failback test's copy was not removed (%v); 'ferry cleanup %s' is refused until the machine is test-failed-back: remove %s by hand", name, err, name, filepath.Join(m.RoundTrip.TestDir, name, m.RoundTrip.Test.Set))
			return
		}
		m.RoundTrip.Test = nil
		if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
			j.r.Note("%s: %v", name, err)
		}
	}
}

// endHomeTest stops the test copy through the home driver and removes its
// clone.
func (j *job) endHomeTest(ctx context.Context, m catalog.Machine) error {
	if err := j.stopHomeCopy(ctx, m); err != nil {
		return err
	}
	if homeTestHypervisor(m, m.RoundTrip.Test).Kind != "" {
		// A hypervisor home defined the test machine: its definition
		// goes (never its disks) before the clone does.
		if _, err := j.homeTestDriver(ctx, m, m.RoundTrip.Test, msg.ActionRemove); err != nil {
			return agentErr(err, "the home driver could not remove the test copy %s", m.RoundTrip.Test.Name)
		}
	}
	err := j.e.Agents.Call(ctx, m.AgentID, msg.MethodTargetRemove, msg.TargetRef{Dir: m.RoundTrip.TestDir, Machine: m.Name, Set: m.RoundTrip.Test.Set}, &struct{}{})
	if err != nil && !errors.Is(err, protocol.ErrNotFound) {
		return err
	}
	return nil
}

// stopHomeCopy stops the test copy through the home driver (nothing when
// its status says it is not running).
func (j *job) stopHomeCopy(ctx context.Context, m catalog.Machine) error {
	test := m.RoundTrip.Test
	if !j.e.Agents.Connected(m.AgentID) {
		return unavailable("the home agent of %s is not connected", m.Name)
	}
	if homeStoppable(m) {
		stopped := false
		if homeStatus(m) {
			r, err := j.homeTestDriver(ctx, m, test, "status")
			stopped = err == nil && r.Status != "running"
		}
		if !stopped {
			if _, err := j.homeTestDriver(ctx, m, test, "stop"); err != nil {
				return agentErr(err, "the home driver could not stop the test copy %s", test.Name)
			}
		}
		if homeStatus(m) {
			if s, err := waitStatus(ctx, func() (string, error) {
				r, err := j.homeTestDriver(ctx, m, test, "status")
				return r.Status, err
			}, notRunning); err != nil {
				return refuse("the test copy %s did not stop at home (%s): %w", test.Name, s, err)
			}
		}
	} else if homeStatus(m) {
		if r, err := j.homeTestDriver(ctx, m, test, "status"); err != nil || r.Status == "running" {
			return refuse("the test copy %s runs at home (%q, %v) and the home driver has no stop command: stop it yourself, then clean up", test.Name, r.Status, err)
		}
	}
	return nil
}

// stopHomeTest is the failback test cleanup's first step: the test copy
// stops through the home driver.
func stopHomeTest(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if m.State != catalog.StateTestFailedBack {
		if err := j.checkState(m); err != nil {
			return err
		}
	}
	if m.RoundTrip == nil || m.RoundTrip.Test == nil {
		return refuse("machine %s is %s but records no failback test", name, m.State)
	}
	md.SourceAgent, md.Dir, md.Set, md.DriverName = m.AgentID, m.RoundTrip.TestDir, m.RoundTrip.Test.Set, m.RoundTrip.Test.Name
	return j.stopHomeCopy(ctx, m)
}

// removeHomeTest stops the copy (idempotent), removes the clone and
// returns the machine to reverse-protected.
func removeHomeTest(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if m.RoundTrip == nil || m.RoundTrip.Test == nil {
		return nil // removed before a restart
	}
	if err := j.endHomeTest(ctx, m); err != nil {
		return err
	}
	j.r.MachineNote(name, fmt.Sprintf("the failback test %s was stopped and its clone %s removed", m.RoundTrip.Test.Name, filepath.Join(m.RoundTrip.TestDir, name, m.RoundTrip.Test.Set)))
	if err := j.advance(&m); err != nil {
		return err
	}
	m.RoundTrip.Test = nil
	return j.e.Cat.UpdateMachine(ctx, m)
}
