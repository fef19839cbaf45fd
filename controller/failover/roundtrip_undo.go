package failover

import (
	"context"
	"fmt"

	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/protocol/msg"
)

// undoStartedHome decides whether a failback that asked for the start at
// home may be undone fully, and prepares that: the home driver's status
// must prove the machine stopped, and the home disks go back to the job's
// point. An unplanned failback's fence of this job goes too (the copy at
// the recovery site stays the machine), in m, which the caller saves.
// False leaves the machine failing-back, the reason noted.
func (j *job) undoStartedHome(ctx context.Context, m catalog.Machine, md *machineData) bool {
	name := m.Name
	status, why := j.homeProvenStopped(ctx, m, md)
	if why != "" {
		j.r.Note("%s: the machine may run at home (its start was asked for and %s); it stays failing-back for the administrator to decide", name, why)
		return false
	}
	j.r.MachineNote(name, fmt.Sprintf("the start at home was asked for, but the home driver reports the machine %s there: the failback is undone", status))
	if err := j.homeBackToPoint(ctx, m, md); err != nil {
		j.r.Note("%s: the home disks could not be moved back to point %d (%v); it stays failing-back for the administrator to decide", name, md.Point, err)
		return false
	}
	if f := m.RoundTrip.Fence; f != nil && f.Job == j.r.ID() && f.StoppedAt.IsZero() {
		m.RoundTrip.Fence = nil
	}
	m.RoundTrip.Unplanned = false
	return true
}

// homeProvenStopped returns the home driver's status of the machine, and
// why a failback that asked for the start at home cannot prove it is not
// running there ("" when it can): its home driver must have a status
// command and report it stopped (or absent). A failback to another target
// (a replica) is never undone.
func (j *job) homeProvenStopped(ctx context.Context, m catalog.Machine, md *machineData) (status, why string) {
	switch {
	case m.RoundTrip == nil || m.RoundTrip.Replica != "":
		return "", "it was started at another target"
	case !homeStatus(m):
		return "", "its home driver has no status command to prove it stopped"
	case !j.e.Agents.Connected(md.SourceAgent):
		return "", "its home agent is not connected to prove it stopped"
	}
	resp, err := j.homeDriver(ctx, m, md.SourceAgent, "status")
	if err != nil {
		return "", fmt.Sprintf("its home driver's status failed: %v", err)
	}
	if resp.Status != "stopped" && resp.Status != "absent" {
		return resp.Status, fmt.Sprintf("its home driver reports it %q", resp.Status)
	}
	return resp.Status, ""
}

// homeBackToPoint brings the home disk set back to the job's point after
// a start at home that did not take: the start marked the set written (the
// machine may have written before it stopped), so what the disks hold is
// first kept as the point home-divergent-<job>-start (only blocks that
// differ from the newest point travel), then every block the point or the
// disks may hold is rewritten and the home disks equal the point again —
// what reverse replication stages from. A keep that fails leaves the disks
// as they are: nothing the machine wrote is overwritten unkept.
func (j *job) homeBackToPoint(ctx context.Context, m catalog.Machine, md *machineData) error {
	if md.HomeDir == "" || md.Point == 0 {
		return nil
	}
	unlock := j.e.lockMoves(m.Name)
	defer unlock()
	var st msg.TargetStatusResponse
	if err := j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: md.HomeDir, Machine: m.Name}, &st); err != nil {
		return err
	}
	cur, ok := st.Sets[setHome]
	if !ok {
		return fmt.Errorf("the home agent keeps no home disk set of %s in %s", m.Name, md.HomeDir)
	}
	if cur.Point == md.Point && cur.MovingTo == 0 && !cur.Written {
		return nil
	}
	mv := Move{AgentID: md.SourceAgent, Ref: md.homeRef(m.Name), Machine: m.Name,
		SetPoint: cur.Point, From: cur.Point, MovingTo: cur.MovingTo, To: md.Point, JobID: j.r.ID()}
	if cur.Written {
		mv.From = 0 // the disks' content is unknown: rewrite it all
		if err := j.keepFailedStart(ctx, m, md); err != nil {
			return err
		}
	}
	res, err := j.e.move(ctx, mv)
	if err != nil {
		return err
	}
	j.r.MachineNote(m.Name, fmt.Sprintf("the home disks were moved back to point %d (%d blocks, %d zero blocks rewritten)", md.Point, res.Blocks, res.ZeroBlocks))
	return nil
}

// failedStartPoint names the point that keeps what a failback's start at
// home wrote before it failed (reserved: a home-divergent- name).
func failedStartPoint(job string) string { return "home-divergent-" + job + "-start" }

// keepFailedStart ships the home disks as the failed start left them as
// the point failedStartPoint, once: a run again after a restart finds it.
func (j *job) keepFailedStart(ctx context.Context, m catalog.Machine, md *machineData) error {
	name := failedStartPoint(j.r.ID())
	pts, err := j.e.Repo.Points(ctx, m.Name)
	if err != nil {
		return err
	}
	for _, p := range pts {
		if p.Name == name {
			return nil
		}
	}
	var resp msg.TargetShipResponse
	err = j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodTargetShip, msg.TargetShipRequest{Ref: md.homeRef(m.Name), Name: name}, &resp)
	if err != nil {
		return agentErr(err, "machine %s: keeping what the start at home wrote", m.Name)
	}
	j.r.MachineNote(m.Name, fmt.Sprintf("what the start at home wrote is kept as point %d (%s)", resp.PointID, name))
	return nil
}
