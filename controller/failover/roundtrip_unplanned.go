package failover

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/controller/points"
	"github.com/ferrydr/ferry/protocol/msg"
)

// The unplanned failback (docs/failover.md "Unplanned failback and
// fencing"): `ferry failback M --unplanned` or `--point SPEC` moves the
// home disks, in place, to a point of the reverse replication (the newest
// without --point), without a final cycle, and starts the machine at home:
// writes made at the recovery site after that point are not brought home.
// The machine ends failed-back, which allows change-point (the home disks
// move to another point) and commit (→ back-home). With --unplanned the
// recovery site may be unreachable: the job then records a fence
// (fence.go) instead of stopping the machine there.

// prepareUnplannedFailback is the unplanned failback's prerequisites: a
// machine replicating home, the home agent, a start command at home, the
// point, and either the recovery site's agent (its machine is stopped) or
// --unplanned (a fence is recorded).
func prepareUnplannedFailback(ctx context.Context, j *job, name string, md *machineData) error {
	m, t, err := j.replicatingHome(ctx, name, md, j.inFlight)
	if err != nil {
		return err
	}
	md.Dir, md.Set, md.DriverName = t.Dir, setLive, name
	md.SourceAgent, md.HomeDir, md.Divergent = m.AgentID, m.RoundTrip.HomeDir, 0
	if !homeStartable(m) {
		return refuse("machine %s has no start command at home (protect with --start): a failback starts it there", name)
	}
	if j.inFlight(m) {
		// An earlier attempt recorded the point and the fence first.
		md.FenceOwed = m.RoundTrip.Fence != nil && m.RoundTrip.Fence.Job == j.r.ID()
		if md.Point == 0 {
			return refuse("machine %s: the job's point was not recorded before its state changed", name)
		}
		return nil
	}
	pts, err := j.e.Repo.Points(ctx, name)
	if err != nil {
		return err
	}
	if len(pts) == 0 {
		return refuse("machine %s has no point to fail back to", name)
	}
	// The newest point that reads no damaged data, unless one is named
	// (latest-verified asks the catalog which points drills verified).
	p, err := points.PickIn(ctx, j.e.Cat, pts, j.spec.Action.Point, name)
	if errors.Is(err, points.ErrNoPoint) && j.spec.Action.Point == "" && j.spec.Action.AllowDamaged {
		p, err = pts[len(pts)-1], nil
	}
	if err != nil {
		return refuse("%w", err)
	}
	if err := checkDamaged(p, j.spec.Action.AllowDamaged); err != nil {
		return err
	}
	reachable := j.e.Agents.Connected(md.TargetAgent)
	if !reachable && !j.spec.Action.Unplanned {
		return refuse("the recovery site %s is unreachable (its agent is not connected): Ferry cannot stop %s there; give --unplanned to bring it home anyway (the copy there is stopped and its writes kept as a point when the site reconnects)", t.Name, name)
	}
	if reachable && !hasStatus(t) {
		return refuse("the driver of target %s has no status command: Ferry cannot prove %s stopped there before starting it at home", t.Name, name)
	}
	if !j.e.Agents.Connected(md.SourceAgent) {
		return unavailable("the home agent of %s is not connected", name)
	}
	// Both sides running would be split brain: home must be stopped.
	if err := j.requireHomeStopped(ctx, m, md.SourceAgent, false, m.RoundTrip.SourceIsOff); err != nil {
		return err
	}
	md.Point, md.FenceOwed = p.ID, !reachable
	if err := j.saveMachineData(name, md); err != nil {
		return err
	}
	m.State = catalog.StateFailingBack
	m.RoundTrip.InFlight, m.RoundTrip.Unplanned = j.r.ID(), true
	if md.FenceOwed {
		m.RoundTrip.Fence = &catalog.Fence{Job: j.r.ID(), Target: t.Name}
	}
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	pname := ""
	if p.Name != "" {
		pname = " (" + p.Name + ")"
	}
	j.r.MachineNote(name, fmt.Sprintf("unplanned: the home disks move to point %d%s taken %s, %s; writes made at the recovery site after it are not brought home",
		p.ID, pname, p.Instant.UTC().Format(time.RFC3339), p.Consistency))
	if md.FenceOwed {
		j.r.MachineNote(name, fmt.Sprintf("fence pending: the recovery site %s is unreachable and its copy of %s may still run; when its agent reconnects the machine there is stopped through its driver before anything else, and its disks are kept as the point %s%s",
			t.Name, name, RecoveryDivergentPrefix, j.r.ID()))
	} else if err := j.e.Push(ctx, md.TargetAgent); err != nil {
		j.r.Note("%s: could not pause reverse replication (%v)", name, err)
	}
	j.r.SetMachine(name, "prepared", md.Point, nil)
	return nil
}

// stopRecoveryUnplanned stops the machine at a reachable recovery site
// (nothing to do when the job owes a fence instead).
func stopRecoveryUnplanned(ctx context.Context, j *job, name string, md *machineData) error {
	if md.FenceOwed {
		return jobs.ErrSkip
	}
	if !j.e.Agents.Connected(md.TargetAgent) {
		return unavailable("the agent of the recovery site %s is not connected", md.Target)
	}
	return j.requireRecoveryStopped(ctx, md, name, true, false)
}

// startHomeUnplanned starts the machine at home (startHome) and says
// where its fence stands.
func startHomeUnplanned(ctx context.Context, j *job, name string, md *machineData) error {
	if err := startHome(ctx, j, name, md); err != nil {
		return err
	}
	if md.FenceOwed {
		m, err := j.e.Cat.Machine(ctx, name)
		if err == nil && m.RoundTrip != nil {
			j.r.MachineNote(name, "fence "+fenceState(m.RoundTrip.Fence))
		}
	}
	return nil
}

// undoUnplannedFailback puts a machine whose unplanned failback did not
// start it at home back to replicating home: the fence this job recorded
// goes (the copy at the recovery site stays the machine), then as a
// planned failback's undo.
func undoUnplannedFailback(ctx context.Context, j *job, name string, md *machineData) {
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil || !j.inFlight(m) || md.Started {
		undoFailback(ctx, j, name, md)
		return
	}
	if m.RoundTrip != nil {
		if f := m.RoundTrip.Fence; f != nil && f.Job == j.r.ID() && f.StoppedAt.IsZero() {
			m.RoundTrip.Fence = nil
		}
		m.RoundTrip.Unplanned = false
		if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
			j.r.Note("%s: %v", name, err)
		}
	}
	undoFailback(ctx, j, name, md)
}

// prepareChangePointHome is change-point's prerequisites for a failed-back
// machine: its failback record, the point, the home agent.
func prepareChangePointHome(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if err := j.checkState(m); err != nil {
		return err
	}
	if m.Failover == nil || m.RoundTrip == nil {
		return refuse("machine %s is %s but records no failback", name, m.State)
	}
	md.Target, md.Set, md.DriverName = m.Failover.Target, setLive, name
	md.SourceAgent, md.HomeDir = m.AgentID, m.RoundTrip.HomeDir
	if md.RanOn == 0 {
		md.RanOn = m.Failover.PointID
	}
	p, err := points.Resolve(ctx, j.e.Repo, j.e.Cat, name, j.spec.Point)
	if errors.Is(err, points.ErrBadSpec) || errors.Is(err, points.ErrNoPoint) {
		return refuse("%w", err)
	}
	if err != nil {
		return err
	}
	if p.ID == md.RanOn {
		return refuse("machine %s already runs point %d at home", name, p.ID)
	}
	if err := checkDamaged(p, j.spec.Req.AllowDamaged); err != nil {
		return err
	}
	md.Point = p.ID
	if !homeStartable(m) {
		return refuse("machine %s has no start command at home (protect with --start): change-point starts it there again", name)
	}
	if !j.e.Agents.Connected(md.SourceAgent) {
		return unavailable("the home agent of %s is not connected", name)
	}
	j.r.SetMachine(name, "prepared", md.Point, nil)
	return nil
}

// stopHomeForChange stops the machine at home through its driver; the
// job records that it did (durably, before the stop) so a failure before
// the home disks move starts it again.
func stopHomeForChange(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if !md.StoppedHome && homeStatus(m) {
		resp, err := j.homeDriver(ctx, m, md.SourceAgent, "status")
		if err != nil {
			return agentErr(err, "machine %s: the home driver's status", name)
		}
		if resp.Status == "running" {
			md.StoppedHome = true
			if err := j.saveMachineData(name, md); err != nil {
				return err
			}
		}
	}
	return j.requireHomeStopped(ctx, m, md.SourceAgent, true, false)
}

// moveHomeWritten moves the home disks, which the machine wrote since they
// last moved, to the job's point: keep-home shipped them as point
// md.Divergent (a hash resync), so the move writes only the blocks that
// differ between that point and the job's.
func moveHomeWritten(ctx context.Context, j *job, name string, md *machineData) error {
	if md.Moved {
		return nil
	}
	if md.Divergent == 0 {
		return refuse("machine %s: the home disks were not kept before the move", name)
	}
	if !md.MoveBegun {
		md.MoveBegun = true
		if err := j.saveMachineData(name, md); err != nil {
			return err
		}
	}
	unlock := j.e.lockMoves(name)
	defer unlock()
	var st msg.TargetStatusResponse
	if err := j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: md.HomeDir, Machine: name}, &st); err != nil {
		return err
	}
	cur, ok := st.Sets[setHome]
	if !ok {
		return refuse("the home agent keeps no home disk set of %s in %s", name, md.HomeDir)
	}
	res, err := j.e.move(ctx, Move{AgentID: md.SourceAgent, Ref: md.homeRef(name), Machine: name,
		SetPoint: cur.Point, From: md.Divergent, MovingTo: cur.MovingTo, To: md.Point, Force: true, JobID: j.r.ID()})
	if err != nil {
		return err
	}
	md.Moved = true
	j.r.Note("%s: home disks: %d blocks (%d bytes) and %d zero blocks rewritten in place from point %d to %d", name, res.Blocks, res.Bytes, res.ZeroBlocks, md.Divergent, md.Point)
	j.r.SetMachine(name, "moved", md.Point, nil)
	return nil
}

// startHomeAgain starts the machine at home on its new point and records
// the point in its failback record.
func startHomeAgain(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if err := j.runAtHome(ctx, m, md); err != nil {
		return err
	}
	if err := j.advance(&m); err != nil {
		return err
	}
	m.Failover = &api.FailoverInfo{Job: j.r.ID(), Target: md.Target, PointID: md.Point, Set: setLive}
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	j.r.MachineNote(name, fmt.Sprintf("the machine runs at home on point %d; its disks as they were are kept as point %d (home-divergent-%s)", md.Point, md.Divergent, j.r.ID()))
	j.r.SetMachine(name, "running", md.Point, nil)
	return nil
}

// undoChangePointHome starts the machine at home again when the job
// stopped it and its disks did not begin to move; once they did they may
// be between two points, and the machine stays stopped for the
// administrator (change-point again finishes the move).
func undoChangePointHome(ctx context.Context, j *job, name string, md *machineData) {
	if !md.StoppedHome || md.Started {
		return
	}
	if md.MoveBegun {
		j.r.Note("%s: the home disks may be part-way to point %d: the machine stays stopped at home; run change-point again (its writes are kept as point %d)", name, md.Point, md.Divergent)
		return
	}
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil {
		j.r.Note("%s: %v", name, err)
		return
	}
	if _, err := j.startAtHome(ctx, m, md); err != nil {
		j.r.Note("%s: starting it at home again failed: %v", name, err)
		return
	}
	j.r.Note("%s: the machine was started at home again on the disks it had", name)
}

// keepRecovery is the forward re-protect's step after an unplanned
// failback: the recovery site's disks may hold writes made after the
// point the machine came home to (it may have kept running there), so
// they are kept as recovery-divergent-<job> — the fence's point when a
// fence made one — and the staging that follows moves them from that
// point, writing only the blocks that differ. After a planned failback
// they hold the final point and nothing is done.
func keepRecovery(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if m.RoundTrip == nil || !m.RoundTrip.Unplanned {
		return jobs.ErrSkip
	}
	if md.RecoveryDivergent != 0 {
		return nil
	}
	if f := m.RoundTrip.Fence; f != nil {
		if !f.Done {
			return unavailable("machine %s: fence %s", name, fenceState(f))
		}
		if f.Point != 0 {
			md.RecoveryDivergent = f.Point
			j.r.MachineNote(name, fmt.Sprintf("the recovery site's disks were kept by the fence as point %d (%s%s)", f.Point, RecoveryDivergentPrefix, f.Job))
			return nil
		}
	}
	var resp msg.TargetShipResponse
	err = j.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetShip, msg.TargetShipRequest{
		Ref: msg.TargetRef{Dir: md.Dir, Machine: name, Set: setLive}, Name: RecoveryDivergentPrefix + j.r.ID()}, &resp)
	if err != nil {
		return agentErr(err, "machine %s: keeping the recovery site's disks", name)
	}
	md.RecoveryDivergent = resp.PointID
	j.r.MachineNote(name, fmt.Sprintf("the recovery site's disks as they were are kept as point %d (%s%s)", resp.PointID, RecoveryDivergentPrefix, j.r.ID()))
	return nil
}

// requireFenced is the forward re-protect's wait for a pending fence: it
// fences now when the recovery agent is connected (the fence at its hello
// may have failed), else waits for it (a retryable error).
func (j *job) requireFenced(ctx context.Context, m catalog.Machine) error {
	if m.RoundTrip == nil || m.RoundTrip.Fence == nil || m.RoundTrip.Fence.Done {
		return nil
	}
	if err := j.e.FenceMachine(ctx, m.Name); err != nil {
		if jobs.IsRetryable(err) {
			return err
		}
		return unavailable("machine %s: fencing the recovery site: %v", m.Name, err)
	}
	if m2, err := j.e.Cat.Machine(ctx, m.Name); err == nil && m2.RoundTrip != nil {
		j.r.MachineNote(m.Name, "fence "+fenceState(m2.RoundTrip.Fence))
	}
	return nil
}
