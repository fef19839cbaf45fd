package failover

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/controller/lifecycle"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// The round trip (docs/failover.md "Both directions"): reprotect makes the
// recovery agent the machine's source, reading its live disks, and the
// home disks — where they are — its replica; failback stops the machine at
// the recovery site, takes a final cycle, moves the home disks to it and
// starts the machine at home; reprotect after a failback restores the
// forward direction. The steps shared by these kinds are here; each kind's
// list is in its kind_*.go file.

// setHome is the home disk set (agent/apply SetHome): the home disks
// themselves, its state kept by the home agent in homeDir.
const setHome = "home"

// homeDir is where the home agent keeps the home disk set's state: next to
// the machine's first disk (the disks stay where they are).
func homeDir(m catalog.Machine) string {
	return filepath.Join(filepath.Dir(m.Spec.Disks[0].Path), ".ferry-home")
}

func (md *machineData) homeRef(name string) msg.TargetRef {
	return msg.TargetRef{Dir: md.HomeDir, Machine: name, Set: setHome}
}

// inFlight reports whether this job put the machine in the state it is in
// (a step run again after a restart finds its own intermediate state).
func (j *job) inFlight(m catalog.Machine) bool {
	return m.RoundTrip != nil && m.RoundTrip.InFlight == j.r.ID()
}

// homeDriver runs the machine's source driver at home through the home
// agent (the machine may not be in that agent's replication any more).
func (j *job) homeDriver(ctx context.Context, m catalog.Machine, agentID, action string) (msg.DriverResponse, error) {
	return j.homeDriverRef(ctx, m, agentID, action, nil)
}

// homeDriverRef is homeDriver naming the set a start runs on (nil: none).
func (j *job) homeDriverRef(ctx context.Context, m catalog.Machine, agentID, action string, ref *msg.TargetRef) (msg.DriverResponse, error) {
	var paths []string
	for _, d := range m.Spec.Disks {
		paths = append(paths, d.Path)
	}
	var resp msg.DriverResponse
	ctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()
	err := j.e.Agents.Call(ctx, agentID, msg.MethodTargetDriver, msg.TargetDriverRequest{
		Machine: m.Name, Action: action, Commands: msg.Driver(m.Spec.Driver), Ref: ref, Hypervisor: sourceHypervisor(m),
		Env: map[string]string{"FERRY_JOB": j.r.ID(), "FERRY_KIND": j.r.Kind(), "FERRY_MACHINE": m.Name,
			"FERRY_DISKS": strings.Join(paths, "\n"), "FERRY_TEST": "0"}}, &resp)
	return resp, err
}

// waitStatus polls a status until want says yes, for up to 5 minutes.
func waitStatus(ctx context.Context, status func() (string, error), want func(string) bool) (string, error) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		s, err := status()
		if err == nil && want(s) {
			return s, nil
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("the status stayed %q (last error: %v) for 5 minutes", s, err)
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func notRunning(s string) bool { return s != "running" }

// requireHomeStopped is the split-brain rule at home: nothing writes into
// the home disks while the machine runs on them. The home driver's status
// must prove the machine stopped; with stop (--stop-source) Ferry stops it
// first; an administrator's --source-is-off is recorded instead.
func (j *job) requireHomeStopped(ctx context.Context, m catalog.Machine, homeAgent string, stop, declaredOff bool) error {
	if declaredOff {
		j.r.MachineNote(m.Name, "the machine at home was declared off by the administrator (--source-is-off); Ferry did not check it")
		return nil
	}
	if !homeStatus(m) {
		return refuse("machine %s: its home driver has no status command, so Ferry cannot prove the machine at home (agent of its home site) is stopped; protect it with --status, or declare it off with --source-is-off", m.Name)
	}
	if !j.e.Agents.Connected(homeAgent) {
		return unavailable("the home agent of %s is not connected", m.Name)
	}
	resp, err := j.homeDriver(ctx, m, homeAgent, "status")
	if err != nil {
		return refuse("machine %s: the home driver's status failed: %w", m.Name, err)
	}
	if resp.Status != "running" {
		return nil
	}
	if !stop {
		return refuse("machine %s is running at its home site: writing the home disks would overwrite the disks it uses (split brain); give --stop-source to stop it through its driver, or stop it yourself", m.Name)
	}
	if !homeStoppable(m) {
		return refuse("machine %s is running at its home site and its home driver has no stop command; stop it yourself, then re-protect", m.Name)
	}
	if _, err := j.homeDriver(ctx, m, homeAgent, "stop"); err != nil {
		return refuse("machine %s: stopping it at home failed: %w", m.Name, err)
	}
	if s, err := waitStatus(ctx, func() (string, error) {
		r, err := j.homeDriver(ctx, m, homeAgent, "status")
		return r.Status, err
	}, notRunning); err != nil {
		return refuse("machine %s did not stop at home (%s): %w", m.Name, s, err)
	}
	j.r.MachineNote(m.Name, "the machine at home was stopped through its driver (--stop-source)")
	return nil
}

// recoveryStatus is the recovery site driver's status of the machine.
func (j *job) recoveryStatus(ctx context.Context, md *machineData, name string) (string, error) {
	env := map[string]string{"FERRY_JOB": j.r.ID(), "FERRY_KIND": j.r.Kind(), "FERRY_MACHINE": name,
		"FERRY_TARGET": md.Target, "FERRY_SET": setLive}
	resp, err := j.driverFor(ctx, md, name, setLive, name, "status", env)
	return resp.Status, err
}

// requireRecoveryStopped is the split-brain rule at the recovery site.
func (j *job) requireRecoveryStopped(ctx context.Context, md *machineData, name string, stop, declaredOff bool) error {
	if declaredOff {
		j.r.MachineNote(name, "the machine at the recovery site was declared off by the administrator (--source-is-off); Ferry did not check it")
		return nil
	}
	t, err := j.target(ctx, md)
	if err != nil {
		return err
	}
	if !hasStatus(t) {
		return refuse("machine %s: the driver of target %s has no status command, so Ferry cannot prove the machine there is stopped; declare it off with --source-is-off", name, t.Name)
	}
	s, err := j.recoveryStatus(ctx, md, name)
	if err != nil {
		return refuse("machine %s: the status at target %s failed: %w", name, t.Name, err)
	}
	if s != "running" {
		return nil
	}
	if !stop {
		return refuse("machine %s is running at its recovery site (target %s): give --stop-source to stop it through its driver, or stop it yourself", name, t.Name)
	}
	if err := stopTarget(ctx, j, name, md); err != nil {
		return err
	}
	md.StoppedTarget = true
	if s, err := waitStatus(ctx, func() (string, error) { return j.recoveryStatus(ctx, md, name) }, notRunning); err != nil {
		return refuse("machine %s did not stop at target %s (%s): %w", name, t.Name, s, err)
	}
	return nil
}

// agentErr turns an agent's error that retrying cannot fix into a refusal.
func agentErr(err error, format string, args ...any) error {
	if err == nil || jobs.IsRetryable(err) {
		return err
	}
	return &Refusal{Msg: fmt.Sprintf(format, args...) + ": " + err.Error(), Err: err}
}

// prepareReprotect is the reverse re-protect's prerequisites step: a
// committed failover, a raw recovery site holding the machine's live
// disks, and the home agent.
func prepareReprotect(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if !j.inFlight(m) {
		if err := j.checkState(m); err != nil {
			return err
		}
		md.FromState = m.State
	}
	if m.Failover == nil || m.Failover.Set != setLive {
		return refuse("machine %s is %s but records no failover whose disks could be replicated home", name, m.State)
	}
	a := j.spec.Action
	if err := j.prepareReplica(ctx, m); err != nil {
		return err
	}
	if err := checkTestDir(a.TestDir); err != nil {
		return err
	}
	t, agentID, err := j.e.Cat.Target(ctx, m.Failover.Target)
	if errors.Is(err, catalog.ErrNotFound) {
		return refuse("the target of %s's failover: %w", name, err)
	}
	if err != nil {
		return err
	}
	if err := checkReverseFormat(t); err != nil {
		return err
	}
	md.Target, md.TargetAgent, md.Dir, md.Set, md.DriverName = t.Name, agentID, t.Dir, setLive, name
	md.SourceAgent, md.HomeDir, md.Point = m.AgentID, homeDir(m), 0
	if !j.e.Agents.Connected(md.TargetAgent) {
		return unavailable("the agent of the recovery site %s is not connected", t.Name)
	}
	replica := j.replicaName(m) // the home disks are only read (reprotect --target)
	if !j.e.Agents.Connected(md.SourceAgent) && replica == "" {
		return unavailable("the home agent of %s is not connected", name)
	}
	if replica == "" {
		if err := j.checkHome(ctx, name, md); err != nil {
			return err
		}
	}
	if j.e.Repo.Encrypted() {
		// The home disks are staged from sealed chunks: the home agent
		// must hold this repository's key (the controller never does).
		held, err := j.e.agentKey(ctx, md.SourceAgent, md.HomeDir, name)
		if err != nil {
			return err
		}
		if want := j.e.Repo.PublicKey().Fingerprint(); held != want {
			return refuse("machine %s: the repository is encrypted and the home agent holds no key of it (fingerprint %.16s…): install it there (ferry-agent key install) so the home disks can be kept current", name, want)
		}
	}
	st, err := j.targetStatus(ctx, md, name)
	if err != nil {
		return err
	}
	if _, ok := st.Sets[setLive]; !ok {
		return refuse("target %s holds no live disks of %s in %s", t.Name, name, t.Dir)
	}
	pts, err := j.e.Repo.Points(ctx, name)
	if err != nil {
		return err
	}
	if len(pts) == 0 {
		return refuse("machine %s has no point left: its commit predates re-protection; protect it again for a full copy", name)
	}
	j.r.SetMachine(name, "prepared", 0, nil)
	return nil
}

// stopHomeSide is re-protect's split-brain step (reverse: the home machine).
func stopHomeSide(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	return j.requireHomeStopped(ctx, m, md.SourceAgent, j.spec.Action.StopSource, j.spec.Action.SourceIsOff)
}

// adoptHome makes the home disks, where they are, the home disk set.
func adoptHome(ctx context.Context, j *job, name string, md *machineData) error {
	if skip, err := j.skipHomeForReplica(ctx, name, md); skip || err != nil {
		return err
	}
	req, err := j.homeAdoptRequest(ctx, name, md)
	if err != nil {
		return err
	}
	var st msg.DiskSetState
	if err := j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodTargetAdopt, req, &st); err != nil {
		return agentErr(err, "machine %s: the home disks cannot be updated in place", name)
	}
	return nil
}

// keepHome ships the home disks as they are as the point
// home-divergent-<job> before anything overwrites them: writes made at
// home after the last point that reached the controller (an unplanned
// failover) stay recoverable. Only blocks that differ from the newest
// point travel (a hash resync).
func keepHome(ctx context.Context, j *job, name string, md *machineData) error {
	if md.Divergent != 0 {
		return nil
	}
	if skip, err := j.skipHomeForReplica(ctx, name, md); skip || err != nil {
		return err
	}
	var resp msg.TargetShipResponse
	err := j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodTargetShip, msg.TargetShipRequest{
		Ref: md.homeRef(name), Name: "home-divergent-" + j.r.ID()}, &resp)
	if err != nil {
		return agentErr(err, "machine %s: keeping the home disks", name)
	}
	md.Divergent = resp.PointID
	j.r.MachineNote(name, fmt.Sprintf("the home disks as they were were kept as point %d (home-divergent-%s)", resp.PointID, j.r.ID()))
	return nil
}

// startReverse makes the recovery agent the machine's source: the state
// says reprotecting, the direction reverse; the agent reads the live disks
// and a first cycle (a hash resync: only what differs travels) makes the
// point the home disks move to.
func startReverse(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if !j.inFlight(m) {
		st, err := j.targetStatus(ctx, md, name)
		if err != nil {
			return err
		}
		t, err := j.target(ctx, md)
		if err != nil {
			return err
		}
		paths := recoverySourcePaths(t, st.Sets[setLive])
		m.State, m.Direction, m.ActiveSite = catalog.StateReprotecting, catalog.Reverse, catalog.SiteRecovery
		m.RoundTrip = &catalog.RoundTrip{Job: j.r.ID(), InFlight: j.r.ID(), Target: md.Target, RecoveryPaths: paths,
			HomeDir: md.HomeDir, Divergent: md.Divergent, SourceIsOff: j.spec.Action.SourceIsOff, TestDir: j.spec.Action.TestDir,
			Replica: j.replicaName(m)}
		if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
			return err
		}
	}
	if err := j.e.Push(ctx, md.TargetAgent); err != nil {
		return unavailable("sending the recovery agent its new source machine: %v", err)
	}
	if md.Point != 0 {
		return nil
	}
	var resp msg.CycleNowResponse
	cctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	if err := j.e.Agents.Call(cctx, md.TargetAgent, msg.MethodCycleNow, msg.CycleNowRequest{Machine: name}, &resp); err != nil {
		if errors.Is(err, protocol.ErrNotFound) {
			return unavailable("the recovery agent has not taken the machine yet: %v", err)
		}
		return agentErr(err, "machine %s: the first reverse cycle", name)
	}
	md.Point = resp.PointID
	j.r.MachineNote(name, fmt.Sprintf("reverse replication: the recovery site made point %d", md.Point))
	j.noteReverseConsistency(ctx, name, md.Point)
	j.r.SetMachine(name, "replicating", md.Point, nil)
	return nil
}

// moveHome brings the home disks, in place, to the job's point. The home
// machine's status is checked again first (split brain), unless the
// administrator declared it off.
func moveHome(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if m.RoundTrip != nil && m.RoundTrip.Replica != "" {
		return j.moveReplica(ctx, m, md)
	}
	declared := j.spec.Action.SourceIsOff || (m.RoundTrip != nil && m.RoundTrip.SourceIsOff)
	if err := j.requireHomeStopped(ctx, m, md.SourceAgent, false, declared); err != nil {
		return err
	}
	res, from, err := j.e.moveHomeSet(ctx, m, md.SourceAgent, md.HomeDir, md.Point, j.r.ID(), md.Divergent)
	if err != nil {
		return err
	}
	j.r.Note("%s: home disks: %d blocks (%d bytes) and %d zero blocks rewritten in place from point %d to %d", name, res.Blocks, res.Bytes, res.ZeroBlocks, from, md.Point)
	j.r.SetMachine(name, "moved", md.Point, nil)
	return nil
}

// moveHomeSet moves the home disk set of m to point to. A set whose
// content the controller cannot know from its state (adopted, written)
// holds the point known (the home disks shipped as they were), else the
// diff starts from the set's point.
func (e *Engine) moveHomeSet(ctx context.Context, m catalog.Machine, agentID, dir string, to int64, jobID string, known int64) (MoveResult, int64, error) {
	unlock := e.lockMoves(m.Name)
	defer unlock()
	var st msg.TargetStatusResponse
	if err := e.Agents.Call(ctx, agentID, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: dir, Machine: m.Name}, &st); err != nil {
		return MoveResult{}, 0, err
	}
	cur, ok := st.Sets[setHome]
	if !ok {
		return MoveResult{}, 0, refuse("the home agent keeps no home disk set of %s in %s", m.Name, dir)
	}
	if cur.Point == to && cur.MovingTo == 0 && !cur.Written {
		return MoveResult{}, to, nil
	}
	mv := Move{AgentID: agentID, Ref: msg.TargetRef{Dir: dir, Machine: m.Name, Set: setHome}, Machine: m.Name,
		SetPoint: cur.Point, From: cur.Point, MovingTo: cur.MovingTo, To: to, JobID: jobID}
	if cur.Written {
		if known == 0 {
			return MoveResult{}, 0, refuse("the home disks of %s were written since Ferry last moved them: re-protect again", m.Name)
		}
		mv.From, mv.Force = known, true
	}
	res, err := e.move(ctx, mv)
	return res, mv.From, err
}

// reverseProtected ends a reverse re-protect: the state the lifecycle
// table gives; the stager keeps the home disks current from now on.
func reverseProtected(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	r := lifecycle.Lookup(md.FromState, j.def.action)
	if !r.Allowed() {
		return refuse("machine %s: %s from %s: %s", name, j.def.action, md.FromState, r.Reason)
	}
	m.State = r.Next
	if m.RoundTrip != nil {
		m.RoundTrip.InFlight = ""
	}
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	if err := j.e.Push(ctx, md.TargetAgent); err != nil {
		j.r.Note("%s: the recovery agent hears of the new state when it reconnects (%v)", name, err)
	}
	j.r.SetMachine(name, m.State, md.Point, nil)
	return nil
}

// undoReverse puts a machine whose reverse re-protect did not complete
// back to committed: the recovery agent stops reading it as a source. The
// home disks stay as they are (the point home-divergent-<job> holds what
// they held before).
func undoReverse(ctx context.Context, j *job, name string, md *machineData) {
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil || !j.inFlight(m) {
		return
	}
	m.State, m.Direction, m.RoundTrip = md.FromState, catalog.Forward, nil
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		j.r.Note("%s: %v", name, err)
		return
	}
	if md.TargetAgent != "" {
		if err := j.e.Push(ctx, md.TargetAgent); err != nil {
			j.r.Note("%s: the recovery agent stops replicating it when it reconnects (%v)", name, err)
		}
	}
	j.r.Note("%s: back to %s; the home disks were kept as point %d before any move", name, md.FromState, md.Divergent)
}

// replicatingHome reads, for a failback kind's prerequisites, a machine
// that replicates home and its recovery site (md.Target, md.TargetAgent).
// The lifecycle table must allow the job's action, unless resumed says
// this job itself put the machine in the state it is in (a re-run after a
// restart); the first run records the state it started from.
func (j *job) replicatingHome(ctx context.Context, name string, md *machineData, resumed func(catalog.Machine) bool) (catalog.Machine, api.Target, error) {
	m, err := j.machine(ctx, name)
	if err != nil {
		return m, api.Target{}, err
	}
	if !resumed(m) {
		if err := j.checkState(m); err != nil {
			return m, api.Target{}, err
		}
		if md.FromState == "" {
			md.FromState = m.State
		}
	}
	if m.RoundTrip == nil {
		return m, api.Target{}, refuse("machine %s records no reverse replication", name)
	}
	t, agentID, err := j.e.Cat.Target(ctx, m.RoundTrip.Target)
	if err != nil {
		return m, api.Target{}, agentErr(err, "the recovery site of %s", name)
	}
	md.Target, md.TargetAgent = t.Name, agentID
	return m, t, nil
}

// prepareFailback is failback's prerequisites step: a machine replicating
// home, both agents, drivers that can prove "stopped" and start it home.
func prepareFailback(ctx context.Context, j *job, name string, md *machineData) error {
	m, t, err := j.replicatingHome(ctx, name, md, j.inFlight)
	if err != nil {
		return err
	}
	md.Dir, md.Set, md.DriverName = t.Dir, setLive, name
	md.SourceAgent, md.HomeDir, md.Divergent = m.AgentID, m.RoundTrip.HomeDir, 0
	if !hasStatus(t) {
		return refuse("the driver of target %s has no status command: Ferry cannot prove %s stopped there before starting it at home", t.Name, name)
	}
	if !homeStartable(m) && m.RoundTrip.Replica == "" {
		return refuse("machine %s has no start command at home (protect with --start): a failback starts it there", name)
	}
	if !j.e.Agents.Connected(md.TargetAgent) {
		return refuse("the recovery site %s is unreachable: a planned failback stops the machine there and takes a final cycle; give --unplanned to bring %s home from the newest point replicated home (the copy there is stopped when the site reconnects)", t.Name, name)
	}
	if !j.e.Agents.Connected(md.SourceAgent) {
		return unavailable("the home agent of %s is not connected", name)
	}
	if !j.inFlight(m) {
		// Both sides running would be split brain: home must be stopped.
		if err := j.requireHomeStopped(ctx, m, md.SourceAgent, false, m.RoundTrip.SourceIsOff); err != nil {
			return err
		}
		m.State = catalog.StateFailingBack
		m.RoundTrip.InFlight = j.r.ID()
		if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
			return err
		}
		if err := j.e.Push(ctx, md.TargetAgent); err != nil {
			j.r.Note("%s: could not pause reverse replication (%v); the final cycle is asked for explicitly", name, err)
		}
	}
	j.r.SetMachine(name, "prepared", 0, nil)
	return nil
}

// stopRecovery stops the machine at the recovery site: no more writes.
func stopRecovery(ctx context.Context, j *job, name string, md *machineData) error {
	return j.requireRecoveryStopped(ctx, md, name, true, false)
}

// finalReverseCycle takes the recovery site's cycle that holds every write
// of the stopped machine.
func finalReverseCycle(ctx context.Context, j *job, name string, md *machineData) error {
	if md.Point != 0 {
		return nil
	}
	var resp msg.CycleNowResponse
	cctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	if err := j.e.Agents.Call(cctx, md.TargetAgent, msg.MethodCycleNow, msg.CycleNowRequest{Machine: name}, &resp); err != nil {
		return agentErr(err, "machine %s: the final cycle at the recovery site", name)
	}
	md.Point = resp.PointID
	j.r.MachineNote(name, fmt.Sprintf("planned: final point %d holds every write (the machine was stopped at the recovery site before it)", md.Point))
	j.r.SetMachine(name, "processed", md.Point, nil)
	return nil
}

// startHome starts the machine at home through its driver and records the
// state the lifecycle table gives.
func startHome(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if m.RoundTrip != nil && m.RoundTrip.Replica != "" {
		return j.startReplica(ctx, m, md)
	}
	// Split brain: the recovery copy must still be stopped (an unplanned
	// failback that could not reach it owes a fence instead: fence.go).
	if !md.FenceOwed {
		if !j.e.Agents.Connected(md.TargetAgent) {
			return unavailable("the agent of the recovery site %s is not connected: %s is started at home once its copy there is seen stopped", md.Target, name)
		}
		s, err := j.recoveryStatus(ctx, md, name)
		if err != nil && (jobs.IsRetryable(err) || !j.e.Agents.Connected(md.TargetAgent)) {
			return unavailable("the recovery site %s did not answer (%v): %s is started at home once its copy there is seen stopped", md.Target, err, name)
		}
		if err != nil || s == "running" {
			return refuse("machine %s: the recovery site's copy is %q (%v): not starting it at home", name, s, err)
		}
	}
	if err := j.runAtHome(ctx, m, md); err != nil {
		return err
	}
	r := lifecycle.Lookup(md.FromState, j.def.action)
	if !r.Allowed() {
		return refuse("machine %s: %s from %s: %s", name, j.def.action, md.FromState, r.Reason)
	}
	m.State, m.ActiveSite, m.Direction = r.Next, catalog.SiteHome, catalog.Forward
	m.Failover = &api.FailoverInfo{Job: j.r.ID(), Target: md.Target, PointID: md.Point, Set: setLive}
	m.RoundTrip.InFlight = ""
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	if err := j.e.Push(ctx, md.TargetAgent); err != nil {
		j.r.Note("%s: the recovery agent stops reading it when it reconnects (%v)", name, err)
	}
	j.r.SetMachine(name, "running", md.Point, nil)
	return nil
}

// undoFailback puts a machine whose failback did not complete back to
// replicating home: the machine at the recovery site is started again
// when this job stopped it and did not start it at home. When the start at
// home was asked for, the undo is full only if the home driver's status
// proves the machine stopped there: the home disks go back to the job's
// point first (the machine may have written to them while it started),
// then as before; otherwise the machine stays failing-back.
func undoFailback(ctx context.Context, j *job, name string, md *machineData) {
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil || !j.inFlight(m) {
		return
	}
	if md.Started && !j.undoStartedHome(ctx, m, md) {
		return // roundtrip_undo.go
	}
	if md.StoppedTarget {
		env := map[string]string{"FERRY_JOB": j.r.ID(), "FERRY_KIND": j.r.Kind(), "FERRY_MACHINE": name, "FERRY_TARGET": md.Target, "FERRY_SET": setLive}
		if _, err := j.driverFor(ctx, md, name, setLive, name, "start", env); err != nil {
			j.r.Note("%s: restarting the machine at the recovery site failed: %v", name, err)
		} else {
			j.r.Note("%s: the machine at the recovery site was started again", name)
		}
	}
	m.State = md.FromState
	m.RoundTrip.InFlight = ""
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		j.r.Note("%s: %v", name, err)
		return
	}
	if err := j.e.Push(ctx, md.TargetAgent); err != nil {
		j.r.Note("%s: replication home resumes when the recovery agent reconnects (%v)", name, err)
	}
}

// prepareReprotectForward is the forward re-protect's prerequisites: the
// machine back home after a planned failback, the recovery site reachable.
func prepareReprotectForward(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if err := j.checkState(m); err != nil {
		return err
	}
	md.FromState = m.State
	if m.Failover == nil || m.Failover.PointID == 0 {
		return refuse("machine %s records no failback point", name)
	}
	a := j.spec.Action
	if a.Target != "" && a.Target != m.Failover.Target {
		return refuse("re-protecting %s to another target than %s is not built yet", name, m.Failover.Target)
	}
	t, agentID, err := j.e.Cat.Target(ctx, m.Failover.Target)
	if err != nil {
		return agentErr(err, "the recovery site of %s", name)
	}
	md.Target, md.TargetAgent, md.Dir, md.Set, md.DriverName = t.Name, agentID, t.Dir, setLive, name
	md.SourceAgent, md.Point = m.AgentID, m.Failover.PointID
	if m.RoundTrip != nil {
		md.HomeDir = m.RoundTrip.HomeDir
	}
	if !j.e.Agents.Connected(md.TargetAgent) {
		return unavailable("the agent of the recovery site %s is not connected", t.Name)
	}
	return j.requireFenced(ctx, m) // roundtrip_unplanned.go
}

// stopRecoverySide is the forward re-protect's split-brain step.
func stopRecoverySide(ctx context.Context, j *job, name string, md *machineData) error {
	return j.requireRecoveryStopped(ctx, md, name, j.spec.Action.StopSource, j.spec.Action.SourceIsOff)
}

// stageRecovery makes the recovery site's disks the staged replica again:
// the live set (stopped since the failback's final cycle, which read it)
// becomes staged and is recorded as holding that point, so staging goes on
// from there by changed blocks only.
func stageRecovery(ctx context.Context, j *job, name string, md *machineData) error {
	unlock := j.e.lockMoves(name)
	defer unlock()
	st, err := j.targetStatus(ctx, md, name)
	if err != nil {
		return err
	}
	if _, ok := st.Sets[setLive]; ok {
		if _, ok := st.Sets[setStaged]; ok {
			if err := j.removeSet(ctx, md, name, setStaged); err != nil {
				return err
			}
		}
		if err := j.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetDemote, msg.TargetRef{Dir: md.Dir, Machine: name, Set: setLive}, &struct{}{}); err != nil {
			return err
		}
		if st, err = j.targetStatus(ctx, md, name); err != nil {
			return err
		}
	}
	staged, ok := st.Sets[setStaged]
	if !ok {
		return nil // staging writes it from the points
	}
	if staged.Point == md.Point && staged.MovingTo == 0 && !staged.Written {
		return nil
	}
	// The failback's final cycle read these very files with the machine
	// stopped, and nothing started it since (stop-other-side): they hold
	// that point (an unplanned failback's: the point keepRecovery kept). A
	// move from it to itself records so. On another format's site the raw
	// files hold their own point (recoveryRawPoint).
	from, err := j.recoveryRawPoint(ctx, md, staged)
	if err != nil {
		return err
	}
	_, err = j.e.move(ctx, Move{AgentID: md.TargetAgent, Ref: msg.TargetRef{Dir: md.Dir, Machine: name, Set: setStaged}, Machine: name,
		SetPoint: staged.Point, From: from, MovingTo: staged.MovingTo, To: md.Point, Force: true, JobID: j.r.ID()})
	return err
}

// forwardProtected ends a forward re-protect: replication from home again.
func forwardProtected(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	r := lifecycle.Lookup(md.FromState, j.def.action)
	if !r.Allowed() {
		return refuse("machine %s: %s from %s: %s", name, j.def.action, md.FromState, r.Reason)
	}
	m.State, m.ActiveSite, m.Direction = r.Next, catalog.SiteHome, catalog.Forward
	m.Failover, m.RoundTrip, m.Resync = nil, nil, true
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	if md.HomeDir != "" && j.e.Agents.Connected(md.SourceAgent) {
		err := j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodTargetRemove, md.homeRef(name), &struct{}{})
		if err != nil && !errors.Is(err, protocol.ErrNotFound) {
			j.r.Note("%s: the home agent kept the home set's state in %s (%v); remove it by hand", name, md.HomeDir, err)
		}
	}
	if err := j.e.Push(ctx, md.SourceAgent); err != nil {
		j.r.Note("%s: replication from home starts when the home agent reconnects (%v)", name, err)
	}
	j.r.SetMachine(name, m.State, md.Point, nil)
	return nil
}

// runAtHome starts the machine at home through its driver, once: Started
// is saved before the start is asked, so a re-run after a restart does not
// start it twice. With a status command it then waits for "running".
func (j *job) runAtHome(ctx context.Context, m catalog.Machine, md *machineData) error {
	if !md.Started && !j.e.Agents.Connected(md.SourceAgent) {
		return unavailable("the home agent of %s is not connected: the start at home waits for it", m.Name)
	}
	if !md.Started {
		md.Started = true
		if err := j.saveMachineData(m.Name, md); err != nil {
			return err
		}
		if _, err := j.startAtHome(ctx, m, md); err != nil {
			return refuse("the home driver could not start %s: %w", m.Name, err)
		}
	}
	if !homeStatus(m) {
		return nil
	}
	if s, err := waitStatus(ctx, func() (string, error) {
		r, err := j.homeDriver(ctx, m, md.SourceAgent, "status")
		return r.Status, err
	}, func(s string) bool { return s == "running" }); err != nil {
		return refuse("%s did not report running at home (%s): %w", m.Name, s, err)
	}
	return nil
}
