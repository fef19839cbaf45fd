package failover

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Revert's own steps. release-target: the recovery-site disks become the
// staged replica again, which staging brings to the newest point.
// home-cycle: the first cycle from home, so that the machine is
// recoverable from what it runs on now, not from the kept writes.
const (
	StepReleaseTarget = "release-target"
	StepHomeCycle     = "home-cycle"
)

// homeStartable reports whether the source driver can start the machine
// at home (exec --start, or a hypervisor source driver).
func homeStartable(m catalog.Machine) bool {
	return m.Spec.Driver.Start != "" || sourceHypervisor(m).Kind != ""
}

// homeStatus reports whether the source driver can say whether it runs.
func homeStatus(m catalog.Machine) bool {
	return m.Spec.Driver.Status != "" || sourceHypervisor(m).Kind != ""
}

// prepareRevert is revert's prerequisites step: the machine's failover,
// its target agent (the machine stops there and its writes are shipped),
// and its source agent when a driver starts it at home.
func prepareRevert(ctx context.Context, j *job, name string, md *machineData) error {
	if err := loadFailover(ctx, j, name, md); err != nil {
		return err
	}
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	md.SourceAgent = m.AgentID
	md.SourceSeen = md.SourceSeen || j.e.Agents.Connected(m.AgentID)
	if !j.e.Agents.Connected(md.TargetAgent) {
		return unavailable("target agent of %s is not connected: revert stops the machine there and keeps its writes", md.Target)
	}
	if homeStartable(m) && !j.e.Agents.Connected(m.AgentID) {
		return unavailable("the source agent of %s is not connected: revert starts the machine at home through it", name)
	}
	j.r.SetMachine(name, "prepared", md.Point, nil)
	return nil
}

// startHomeRevert starts the machine at home through its source driver.
// StartedHome is recorded before the start: from then on a revert that
// fails never restarts the machine at the recovery site (two copies).
func startHomeRevert(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.machine(ctx, name)
	if err != nil {
		return err
	}
	if !homeStartable(m) {
		j.r.MachineNote(name, "no source driver can start the machine at home (protect with --start or --driver libvirt): start it there yourself")
		return nil
	}
	if !md.StartedHome {
		md.StartedHome = true
		if err := j.saveMachineData(name, md); err != nil {
			return err
		}
	}
	if homeStatus(m) {
		if resp, err := j.sourceDriver(ctx, name, md.SourceAgent, "status"); err == nil && resp.Status == "running" {
			j.r.MachineNote(name, "the machine already runs at home")
			return nil
		}
	}
	if _, err := j.sourceDriver(ctx, name, md.SourceAgent, "start"); err != nil {
		if jobs.IsRetryable(err) {
			return fmt.Errorf("the source driver could not start %s at home: %w", name, err)
		}
		return refuse("the source driver could not start %s at home: %w", name, err)
	}
	j.r.MachineNote(name, "started at home")
	return nil
}

// releaseTarget makes the recovery site's live disks the staged replica
// again (they hold the kept writes; staging rewrites what differs from the
// newest point), or drops them when a staged set exists already.
func releaseTarget(ctx context.Context, j *job, name string, md *machineData) error {
	unlock := j.e.lockMoves(name)
	defer unlock()
	st, err := j.targetStatus(ctx, md, name)
	if err != nil {
		return err
	}
	if _, ok := st.Sets[setLive]; !ok {
		return nil // released by an earlier attempt
	}
	if _, ok := st.Sets[setStaged]; ok {
		return j.removeSet(ctx, md, name, setLive)
	}
	err = j.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetDemote, msg.TargetRef{Dir: md.Dir, Machine: name, Set: setLive}, &struct{}{})
	if errors.Is(err, protocol.ErrNotFound) {
		return nil
	}
	return err
}

// revertedProtected records the machine as protected at home: its
// failover forgotten, replication resumed from home with a hash resync
// (the newest point is the kept writes, not what the home disks hold).
func revertedProtected(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil {
		return err
	}
	if err := j.advance(&m); err != nil {
		return err
	}
	m.Failover = nil
	m.ActiveSite = catalog.SiteHome
	m.Resync = true
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	if err := j.e.Push(ctx, m.AgentID); err != nil {
		j.r.Note("%s: replication resumes when the source agent reconnects (%v)", name, err)
	}
	j.r.SetMachine(name, "reverted", md.Writes, nil)
	return nil
}

// homeCycle asks the source agent for a cycle now (a hash resync against
// the kept writes, the newest point) rather than at its next scheduled
// one. Replication already resumed: a cycle that fails here is retried on
// the policy's schedule, and the revert stands.
func homeCycle(ctx context.Context, j *job, name string, md *machineData) error {
	if !j.e.Agents.Connected(md.SourceAgent) {
		j.r.MachineNote(name, "the source agent is not connected: replication from home resumes when it reconnects")
		return nil
	}
	var resp msg.CycleNowResponse
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := j.e.Agents.Call(cctx, md.SourceAgent, msg.MethodCycleNow, msg.CycleNowRequest{Machine: name}, &resp); err != nil {
		j.r.MachineNote(name, fmt.Sprintf("the first cycle from home failed (%v); replication retries on the policy's schedule", err))
		return nil
	}
	j.r.MachineNote(name, fmt.Sprintf("replicating from home again: point %d", resp.PointID))
	j.r.SetMachine(name, "reverted", resp.PointID, nil)
	return nil
}

// undoRevert is a revert that did not complete: the machine stays failed
// over, and runs again at the recovery site if the job stopped it there
// and never started it at home.
func undoRevert(ctx context.Context, j *job, name string, md *machineData) {
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil || m.State != catalog.StateFailedOver || md.TargetAgent == "" {
		return
	}
	if md.StartedHome {
		j.r.Note("%s: the revert started the machine at home, so it is not restarted at the recovery site; stop it at home before starting it there, or run 'ferry revert %s' again", name, name)
		return
	}
	if !md.StoppedTarget {
		return
	}
	env, err := j.env(ctx, md, name, true)
	if err == nil {
		_, err = j.driver(ctx, md, name, "start", env)
	}
	if err != nil {
		j.r.Note("%s: restarting the machine at the recovery site failed: %v", name, err)
		return
	}
	j.r.Note("%s: the machine runs again at the recovery site", name)
}
