package failover

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/controller/lifecycle"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Re-protection to a new disk set (reprotect --target T, docs/failover.md
// "Re-protecting into new disks"): where the home disks cannot or should
// not be written in place, the reverse replica is the staged set of the
// machine at target T (any agent's target, the home agent's too) — a full
// copy staged from the points, kept current by the stager — and the home
// disks are only read (kept as home-divergent-<job> when the home agent is
// reachable and can read them). Failback moves that set to its final
// point, promotes it to live and starts the machine there through T's
// driver: T's disks and driver are the machine's home from then on.

// replicaName is the target a reverse re-protect replicates into instead
// of the home disks: the job's --target when it names another target than
// the recovery site, or the one the round trip recorded ("": the home
// disks themselves).
func (j *job) replicaName(m catalog.Machine) string {
	if m.RoundTrip != nil && m.RoundTrip.Replica != "" {
		return m.RoundTrip.Replica
	}
	a := j.spec.Action.Target
	if j.def.name == KindReprotect && a != "" && m.Failover != nil && a != m.Failover.Target {
		return a
	}
	return ""
}

// replicaData is a job's machine data for the replica target's set.
func (j *job) replicaData(ctx context.Context, m catalog.Machine, set string, point int64) (*machineData, api.Target, error) {
	name := j.replicaName(m)
	t, agentID, err := j.e.Cat.Target(ctx, name)
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, t, refuse("machine %s: the target %s it replicates home into: %w", m.Name, name, err)
	}
	if err != nil {
		return nil, t, err
	}
	return &machineData{Target: t.Name, TargetAgent: agentID, Dir: t.Dir, Set: set, DriverName: m.Name, Point: point}, t, nil
}

// prepareReplica checks a re-protect's --target T: a raw target other
// than the recovery site, its agent connected, holding no live disks of
// the machine.
func (j *job) prepareReplica(ctx context.Context, m catalog.Machine) error {
	if j.replicaName(m) == "" {
		return nil
	}
	rmd, t, err := j.replicaData(ctx, m, setStaged, 0)
	if err != nil {
		return err
	}
	if t.Format != "" && t.Format != "raw" {
		return refuse("re-protecting into a %s target (%s) is not built yet: only raw disk sets are replicated home into", t.Format, t.Name)
	}
	if j.e.Repo.Encrypted() {
		return refuse("re-protecting an encrypted repository's machine into a new target is not built yet; re-protect into the home disks (without --target)")
	}
	if j.spec.Action.TestDir != "" {
		return refuse("--test-dir with --target is not built yet: a failback test clones the home disks, and with --target there are none to clone")
	}
	rec, _, err := j.e.Cat.Target(ctx, m.Failover.Target)
	if err != nil {
		return agentErr(err, "the recovery site of %s", m.Name)
	}
	if rec.Agent == t.Agent && rec.Dir == t.Dir {
		return refuse("target %s keeps its disks in %s on the same agent as the recovery site %s: choose a target with another directory", t.Name, t.Dir, rec.Name)
	}
	if !j.e.Agents.Connected(rmd.TargetAgent) {
		return unavailable("the agent of target %s is not connected", t.Name)
	}
	st, err := j.targetStatus(ctx, rmd, m.Name)
	if err != nil {
		return err
	}
	if _, ok := st.Sets[setLive]; ok {
		return refuse("target %s holds live disks of %s in %s already: remove them (or choose another target) first", t.Name, m.Name, t.Dir)
	}
	return nil
}

// skipHomeForReplica says whether a re-protect into a new target leaves
// the home disks alone: the home agent is away, or cannot read them as a
// home set (a VMDK home, for one). They are then not kept as a point.
func (j *job) skipHomeForReplica(ctx context.Context, name string, md *machineData) (bool, error) {
	m, err := j.machine(ctx, name)
	if err != nil || j.replicaName(m) == "" {
		return false, err
	}
	if !j.e.Agents.Connected(md.SourceAgent) {
		j.r.MachineNote(name, "the home agent is not connected: the home disks were not kept as a point (re-protect into a new target leaves them as they are)")
		return true, nil
	}
	if err := j.checkHome(ctx, name, md); err != nil {
		var r *Refusal
		if errors.As(err, &r) {
			j.r.MachineNote(name, fmt.Sprintf("the home disks were not kept as a point: %s", r.Msg))
			return true, nil
		}
		return false, err
	}
	return false, nil
}

// moveReplica is move-home with a replica target: re-protect stages the
// target's set from the points (a full copy the first time), failback
// moves it to the final point and promotes it to live.
func (j *job) moveReplica(ctx context.Context, m catalog.Machine, md *machineData) error {
	if j.def.name != KindReprotect && j.def.name != KindFailback {
		return refuse("machine %s replicates home into target %s (reprotect --target): %s from it is not built yet; fail back planned (ferry failback %s)", m.Name, m.RoundTrip.Replica, j.def.name, m.Name)
	}
	if m.State == catalog.StateReprotecting {
		rmd, _, err := j.replicaData(ctx, m, setStaged, md.Point)
		if err != nil {
			return err
		}
		return j.move(ctx, m.Name, rmd, false)
	}
	rmd, _, err := j.replicaData(ctx, m, setLive, md.Point)
	if err != nil {
		return err
	}
	return j.move(ctx, m.Name, rmd, true)
}

// startReplica is start-home with a replica target: the machine starts on
// the target's live disks through its driver, and they become its home —
// its source agent, disks and driver are the target's from now on.
func (j *job) startReplica(ctx context.Context, m catalog.Machine, md *machineData) error {
	name := m.Name
	s, err := j.recoveryStatus(ctx, md, name)
	if err != nil && jobs.IsRetryable(err) {
		return err
	}
	if err != nil || s == "running" {
		return refuse("machine %s: the recovery site's copy is %q (%v): not starting it at target %s", name, s, err, m.RoundTrip.Replica)
	}
	rmd, t, err := j.replicaData(ctx, m, setLive, md.Point)
	if err != nil {
		return err
	}
	if !j.e.Agents.Connected(rmd.TargetAgent) {
		return unavailable("the agent of target %s is not connected", t.Name)
	}
	rmd.Started = md.Started
	env, err := j.env(ctx, rmd, name, true)
	if err != nil {
		return err
	}
	if err := j.startOnce(ctx, md, name, hasStatus(t), func(action string) (string, error) {
		r, err := j.driver(ctx, rmd, name, action, env)
		return r.Status, err
	}); err != nil {
		return agentErr(err, "the driver of target %s could not start %s", t.Name, name)
	}
	if hasStatus(t) {
		if s, err := waitStatus(ctx, func() (string, error) {
			r, err := j.driver(ctx, rmd, name, "status", env)
			return r.Status, err
		}, func(s string) bool { return s == "running" }); err != nil {
			return refuse("%s did not report running at target %s (%s): %w", name, t.Name, s, err)
		}
	}
	st, err := j.targetStatus(ctx, rmd, name)
	if err != nil {
		return err
	}
	paths := map[string]string{}
	for _, d := range st.Sets[setLive].Disks {
		paths[d.Name] = d.Path
	}
	r := lifecycle.Lookup(md.FromState, j.def.action)
	if !r.Allowed() {
		return refuse("machine %s: %s from %s: %s", name, j.def.action, md.FromState, r.Reason)
	}
	oldAgent, oldHome := m.AgentID, m.RoundTrip.HomeDir
	m.State, m.ActiveSite, m.Direction = r.Next, catalog.SiteHome, catalog.Forward
	m.Failover = &api.FailoverInfo{Job: j.r.ID(), Target: md.Target, PointID: md.Point, Set: setLive}
	m.RoundTrip.InFlight, m.RoundTrip.Replica, m.RoundTrip.HomeDir = "", "", ""
	// The target's disks and driver are the machine's home now.
	m.AgentID = rmd.TargetAgent
	for i, d := range m.Spec.Disks {
		if p, ok := paths[d.Name]; ok {
			// The live set's raw files, which Ferry wrote: their first
			// bytes are the guest's, never read as a container.
			m.Spec.Disks[i].Path, m.Spec.Disks[i].Format = p, "raw"
		}
	}
	m.Spec.Driver, m.Spec.SourceDriver, m.Spec.SourceOptions = t.Exec, t.Driver, t.Options
	// A hypervisor target named its machine after the machine (j.driver
	// above), not after the old home's --domain.
	m.Spec.Domain = ""
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	if oldHome != "" && j.e.Agents.Connected(oldAgent) {
		err := j.e.Agents.Call(ctx, oldAgent, msg.MethodTargetRemove, msg.TargetRef{Dir: oldHome, Machine: name, Set: setHome}, &struct{}{})
		if err != nil && !errors.Is(err, protocol.ErrNotFound) {
			j.r.Note("%s: the old home agent kept the home set's state in %s (%v); remove it by hand", name, oldHome, err)
		}
	}
	if err := j.e.Push(ctx, md.TargetAgent); err != nil {
		j.r.Note("%s: the recovery agent stops reading it when it reconnects (%v)", name, err)
	}
	j.r.MachineNote(name, fmt.Sprintf("the machine runs at target %s on %d disk(s) there: they are its home disks from now on", t.Name, len(paths)))
	j.r.SetMachine(name, "running", md.Point, nil)
	return nil
}

// stageReplica keeps a replica target's staged set at the newest point
// while the machine replicates home into it (the stager's stageHome).
func (s *Stager) stageReplica(ctx context.Context, m catalog.Machine) error {
	unlock := s.e.lockMoves(m.Name)
	defer unlock()
	return s.stageTo(ctx, m.Name, m.RoundTrip.Replica)
}

// homeAdoptRequest names the home disks of the newest point: each disk
// of the point and the home file or device it is kept in.
func (j *job) homeAdoptRequest(ctx context.Context, name string, md *machineData) (msg.TargetAdoptRequest, error) {
	m, err := j.machine(ctx, name)
	if err != nil {
		return msg.TargetAdoptRequest{}, err
	}
	pts, err := j.e.Repo.Points(ctx, name)
	if err != nil {
		return msg.TargetAdoptRequest{}, err
	}
	if len(pts) == 0 {
		return msg.TargetAdoptRequest{}, refuse("machine %s has no point left: its commit predates re-protection; protect it again for a full copy", name)
	}
	newest := pts[len(pts)-1]
	req := msg.TargetAdoptRequest{Ref: md.homeRef(name)}
	byName := map[string]api.DiskRef{}
	for _, d := range m.Spec.Disks {
		byName[d.Name] = d
	}
	for _, d := range newest.Disks {
		h, ok := byName[d.Name]
		if !ok {
			return msg.TargetAdoptRequest{}, refuse("disk %s of point %d has no home disk", d.Name, newest.ID)
		}
		// The format recorded at protect is forced ("" for machines
		// protected before formats were recorded: detected).
		req.Disks = append(req.Disks, msg.TargetDisk{Name: d.Name, Size: d.Size, BlockSize: d.BlockSize, Format: h.Format})
		req.Paths = append(req.Paths, h.Path)
	}
	return req, nil
}

// checkHome asks the home agent, before anything is stopped or written,
// whether the home disks can be updated in place: a VMDK or VHD home, or
// the disk the home agent itself runs from (a physical or in-guest
// source), is refused with the reason and the alternatives. An agent of
// an earlier version, which cannot say, is asked again at adopt-home.
func (j *job) checkHome(ctx context.Context, name string, md *machineData) error {
	req, err := j.homeAdoptRequest(ctx, name, md)
	if err != nil {
		return err
	}
	err = j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodTargetCheckHome, req, &struct{}{})
	if errors.Is(err, protocol.ErrNotFound) {
		j.r.Note("%s: the home agent cannot check its disks before they are adopted (an earlier version): adopt-home checks them", name)
		return nil
	}
	return agentErr(err, "machine %s: the home disks cannot be updated in place", name)
}

// startOnce runs a driver's start for a job's machine: md.Started is
// recorded durably first; a re-run (after a restart, or a start call that
// failed retryably) starts again unless the driver's status (withStatus)
// says the machine runs already.
func (j *job) startOnce(ctx context.Context, md *machineData, name string, withStatus bool, drv func(action string) (string, error)) error {
	if md.Started && withStatus {
		if s, err := drv("status"); err == nil && s == "running" {
			return nil
		}
	}
	if !md.Started {
		md.Started = true
		if err := j.saveMachineData(name, md); err != nil {
			return err
		}
	}
	_, err := drv("start")
	return err
}
