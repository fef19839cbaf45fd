package failover

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/lifecycle"
	"github.com/ferrydr/ferry/controller/points"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

// machine reads a machine's record; a machine that is gone is a refusal,
// any other error (the catalog's I/O) stays what it is.
func (j *job) machine(ctx context.Context, name string) (catalog.Machine, error) {
	m, err := j.e.Cat.Machine(ctx, name)
	if errors.Is(err, catalog.ErrNotFound) {
		return m, refuse("machine %s: %w", name, err)
	}
	return m, err
}

// checkState refuses what the lifecycle table refuses for the kind's action.
func (j *job) checkState(m catalog.Machine) error {
	if err := lifecycle.Check(m.Name, m.State, j.def.action); err != nil {
		return &Refusal{Msg: err.Error(), Err: err}
	}
	// An action the table allows after another (a failover of a machine
	// under a test) has that other one run by whoever starts the job (the
	// admin API): a job that finds it undone refuses rather than skip it.
	if r := lifecycle.Lookup(m.State, j.def.action); r.First != "" {
		return refuse("machine %s is %s: %s must run first (ferry %s %s)", m.Name, m.State, r.First, r.First, m.Name)
	}
	for _, n := range j.spec.Preempted {
		j.r.MachineNote(m.Name, n)
	}
	return nil
}

// requireKey refuses a job that cannot move an encrypted repository's
// blocks: it was given no key and the target agent holds none of the
// repository's (asked when it is connected).
func (j *job) requireKey(ctx context.Context, md *machineData, machine string) error {
	_, err := j.e.reader(j.r.ID())
	if err == nil {
		return nil
	}
	if j.e.Agents.Connected(md.TargetAgent) {
		held, aerr := j.e.agentKey(ctx, md.TargetAgent, md.Dir, machine)
		if aerr != nil {
			return aerr
		}
		if held == j.e.Repo.PublicKey().Fingerprint() {
			return nil
		}
		err = keyMissing(held, j.e.Repo.PublicKey().Fingerprint())
		return &Refusal{Msg: err.Error(), Err: err}
	}
	// Whether the agent holds the key is known once it is connected.
	return unavailable("the repository is encrypted, the job has no key, and target agent of %s is not connected to say whether it holds one", md.Target)
}

// prepareFailover is the prerequisites step of a failover that starts
// from a protected machine (failover, test, planned).
func prepareFailover(ctx context.Context, j *job, name string, md *machineData) error {
	e := j.e
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if err := j.checkState(m); err != nil {
		return err
	}
	t, agentID, err := e.machineTarget(ctx, m, j.spec.Req.Target)
	if err != nil {
		return err
	}
	if err := unmappedRefusal(m, t); err != nil {
		return err
	}
	md.Target, md.TargetAgent, md.Dir, md.SourceAgent = t.Name, agentID, t.Dir, m.AgentID
	md.Set, md.DriverName = j.def.set(j.r.ID()), j.def.driverName(name)
	md.SourceSeen = md.SourceSeen || e.Agents.Connected(m.AgentID)
	if err := j.requireKey(ctx, md, name); err != nil {
		return err
	}
	pts, err := e.Repo.Points(ctx, name)
	if err != nil {
		return err
	}
	if len(pts) == 0 {
		return refuse("machine %s has no recovery point yet (initial sync in progress)", name)
	}
	if j.def.precheck != nil {
		if err := j.def.precheck(ctx, j, name, md); err != nil {
			return err
		}
	}
	if ps := j.spec.Req.Point; ps != "" && ps != points.SpecLatest {
		p, err := points.PickIn(ctx, j.e.Cat, pts, ps, name)
		if err != nil {
			return refuse("%w", err)
		}
		if err := j.checkConsistency(ctx, name, p); err != nil {
			return err
		}
		if err := checkDamaged(p, j.spec.Req.AllowDamaged); err != nil {
			return err
		}
		md.Point = p.ID
	}
	if !e.Agents.Connected(agentID) {
		return unavailable("target agent of %s is not connected", t.Name)
	}
	st, err := j.targetStatus(ctx, md, name)
	if err != nil {
		return err
	}
	if s, ok := st.Sets[setStaged]; ok && md.StagedFrom == 0 && !md.StagedExisted {
		md.StagedFrom, md.StagedExisted = s.Point, true
	}
	if err := j.refuseRunningLive(ctx, md, name, st); err != nil {
		return err
	}
	if j.spec.Req.DryRun {
		if md.Point == 0 {
			// As processLatest chooses without a fresh cycle.
			p, err := points.Pick(pts, points.SpecLatest, name)
			if err != nil && j.spec.Req.AllowDamaged {
				p, err = pts[len(pts)-1], nil
			}
			if err != nil {
				return refuse("%w; give --allow-damaged to use one anyway", err)
			}
			md.Point = p.ID
			j.r.MachineNote(name, fmt.Sprintf("latest: a failover takes a fresh cycle first when the source agent is reachable; else it uses point %d, the newest stored point that reads no damaged data", md.Point))
		}
		j.r.SetMachine(name, "checked", md.Point, nil)
		return nil
	}
	// Replication stops (live failovers) before any disk is touched; a
	// test failover lets it go on.
	m.Failover = &api.FailoverInfo{Job: j.r.ID(), Target: t.Name, Set: md.Set}
	if j.def.test {
		m.Failover.TestName = md.DriverName
	}
	if err := e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	if j.def.pausesReplication {
		if err := e.Push(ctx, m.AgentID); err != nil {
			j.r.Note("could not tell the source agent to pause replication (%v); it is refused by the controller instead", err)
		}
	}
	j.r.SetMachine(name, "prepared", md.Point, nil)
	return nil
}

// requirePlannedSource is the planned failover's own prerequisite: a
// source driver that can stop or pause the machine, and its agent.
func requirePlannedSource(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if m.Spec.Driver.Stop == "" && m.Spec.Driver.Pause == "" && m.Spec.SourceDriver == "" {
		return refuse("planned failover of %s needs a source driver that can stop or pause it (protect with --stop or --pause)", name)
	}
	if !j.e.Agents.Connected(m.AgentID) {
		return unavailable("the source agent of %s is not connected: a planned failover needs it", name)
	}
	return nil
}

// loadFailover fills md from the machine's current failover record, after
// checking the kind's action against the lifecycle table (commit,
// change-point, cleanup).
func loadFailover(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if err := j.checkState(m); err != nil {
		return err
	}
	if m.Failover == nil {
		return refuse("machine %s is %s but records no failover", name, m.State)
	}
	t, agentID, err := j.e.Cat.Target(ctx, m.Failover.Target)
	if errors.Is(err, catalog.ErrNotFound) {
		return refuse("the target of %s's failover: %w", name, err)
	}
	if err != nil {
		return err
	}
	md.Target, md.TargetAgent, md.Dir, md.Set, md.Point = t.Name, agentID, t.Dir, m.Failover.Set, m.Failover.PointID
	md.DriverName = name
	if m.Failover.TestName != "" {
		md.DriverName = m.Failover.TestName
	}
	return nil
}

// prepareChangePoint is change-point's prerequisites step: the machine's
// failover, and the point it moves to.
func prepareChangePoint(ctx context.Context, j *job, name string, md *machineData) error {
	if err := loadFailover(ctx, j, name, md); err != nil {
		return err
	}
	p, err := points.Resolve(ctx, j.e.Repo, j.e.Cat, name, j.spec.Point)
	if errors.Is(err, points.ErrBadSpec) || errors.Is(err, points.ErrNoPoint) {
		return refuse("%w", err)
	}
	if err != nil {
		return err
	}
	if p.ID == md.Point {
		return refuse("machine %s already runs point %d", name, p.ID)
	}
	if err := checkDamaged(p, j.spec.Req.AllowDamaged); err != nil {
		return err
	}
	if err := j.requireKey(ctx, md, name); err != nil {
		return err
	}
	md.RanOn, md.Point = md.Point, p.ID
	if !j.e.Agents.Connected(md.TargetAgent) {
		return unavailable("target agent of %s is not connected", md.Target)
	}
	return nil
}

// checkDamaged refuses a point that reads data found damaged (the point
// audit, ferry verify) unless the caller accepts it: some of its blocks
// cannot be read (docs/audit.md).
func checkDamaged(p storage.Point, allow bool) error {
	if p.Damaged && !allow {
		return refuse("point %d is damaged (it reads data the point audit found damaged: machines show names the disks and blocks); choose another point or give --allow-damaged", p.ID)
	}
	return nil
}

// checkConsistency refuses an inconsistent point unless the caller
// accepts it, naming why it is inconsistent (the reason its agent
// recorded) and the ways out: the newest consistent point, if there is
// one, fixing the cause, or --allow-inconsistent.
func (j *job) checkConsistency(ctx context.Context, name string, p storage.Point) error {
	if p.Consistency != storage.Inconsistent || j.spec.Req.AllowInconsistent {
		return nil
	}
	why := "its disks were read while being written"
	notes, err := j.e.Cat.PointNotes(ctx, name)
	if err != nil {
		return err
	}
	if n := notes[p.ID]; n.Reason != "" {
		why = n.Method + ": " + n.Reason
	}
	pts, err := j.e.Repo.Points(ctx, name)
	if err != nil {
		return err
	}
	return refuse("point %d is inconsistent (%s); %s", p.ID, why, inconsistentWayOut(pts))
}

// inconsistentWayOut says what to do instead of failing over to an
// inconsistent point: give the newest consistent point that reads no
// damaged data, if there is one, or make the next points consistent.
func inconsistentWayOut(pts []storage.Point) string {
	for i := len(pts) - 1; i >= 0; i-- {
		if q := pts[i]; q.Consistency != storage.Inconsistent && !q.Damaged {
			return fmt.Sprintf("give --point %d (the newest %s point), fix the cause so that the next points are consistent, or give --allow-inconsistent", q.ID, q.Consistency)
		}
	}
	return "no point of this machine is consistent: fix the cause so that the next points are, or give --allow-inconsistent"
}

// refuseRunningLive refuses a failover whose move would write into a live
// disk set that a running machine uses: a machine of the same name left
// at the target (for example one whose failover was committed, then
// unprotected and protected again under the same name). A live set no
// machine runs on is the leftover of a failed failover of this machine,
// and is reused.
func (j *job) refuseRunningLive(ctx context.Context, md *machineData, name string, st msg.TargetStatusResponse) error {
	if _, ok := st.Sets[setLive]; !ok || md.Set != setLive || md.Started {
		return nil
	}
	running, err := j.driverSaysRunning(ctx, md, name, setLive, name)
	if err != nil {
		return err
	}
	if running {
		return refuse("target %s: a running machine named %s uses the live disks in %s/%s/live; a failover would overwrite them (stop and remove that machine, or protect this one under another name)", md.Target, name, md.Dir, name)
	}
	return nil
}
