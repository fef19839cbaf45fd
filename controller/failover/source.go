package failover

import (
	"context"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/controller/points"
	"github.com/ferrydr/ferry/protocol/msg"
)

func (j *job) sourceDriver(ctx context.Context, name, agentID, action string) (msg.DriverResponse, error) {
	var resp msg.DriverResponse
	ctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil {
		return resp, err
	}
	err = j.e.Agents.Call(ctx, agentID, msg.MethodDriver, msg.DriverRequest{Machine: name, Action: action, Hypervisor: sourceHypervisor(m)}, &resp)
	return resp, err
}

// shutdownSource tries to stop the source; the failover goes on if it cannot.
func shutdownSource(ctx context.Context, j *job, name string, md *machineData) error {
	if !j.e.Agents.Connected(md.SourceAgent) {
		j.r.Note("%s: the source agent is unreachable; shutdown skipped, failover continues", name)
		return nil
	}
	if _, err := j.sourceDriver(ctx, name, md.SourceAgent, "stop"); err != nil {
		j.r.Note("%s: shutting the source down failed (%v); failover continues", name, err)
		return nil
	}
	j.r.Note("%s: source shut down", name)
	return nil
}

// processLatest picks the point: for latest, a fresh cycle when the source
// can make one, else the newest complete point.
func processLatest(ctx context.Context, j *job, name string, md *machineData) error {
	if md.Point != 0 {
		if ps := j.spec.Req.Point; ps != "" && ps != points.SpecLatest {
			return jobs.ErrSkip // a processed point was chosen: nothing to process
		}
		return nil // chosen by an earlier attempt of this step
	}
	e := j.e
	var chosen int64
	if e.Agents.Connected(md.SourceAgent) {
		var resp msg.CycleNowResponse
		cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		err := e.Agents.Call(cctx, md.SourceAgent, msg.MethodCycleNow, msg.CycleNowRequest{Machine: name}, &resp)
		cancel()
		switch {
		case err == nil:
			chosen = resp.PointID
			j.r.MachineNote(name, fmt.Sprintf("latest: the source agent was reachable; a fresh cycle made point %d", chosen))
		case jobs.IsRetryable(err):
			// The source is reachable but busy (a scheduled cycle still
			// runs): wait for the fresh point; the engine retries the step
			// until the job's deadline, then the job fails and says so.
			return fmt.Errorf("latest: waiting for a fresh point from the source (%w); the job fails at its deadline (%s) unless one comes — give --point latest-processed to use the newest stored point instead", err, j.r.Deadline().Format(time.RFC3339))
		default:
			j.r.MachineNote(name, fmt.Sprintf("latest: the source agent was reachable but the fresh cycle failed (%v); using the newest complete point", err))
		}
	} else {
		j.r.MachineNote(name, "latest: the source agent was unreachable; using the newest complete point (an incomplete cycle is never used)")
	}
	pts, err := e.Repo.Points(ctx, name)
	if err != nil {
		return err
	}
	if chosen == 0 {
		if len(pts) == 0 {
			return refuse("machine %s has no recovery point", name)
		}
		chosen = pts[len(pts)-1].ID
	}
	p, err := e.Repo.Point(ctx, chosen)
	if err != nil {
		return err
	}
	if err := checkConsistency(p, j.spec.Req.AllowInconsistent); err != nil {
		return err
	}
	md.Point = chosen
	j.r.SetMachine(name, "processed", chosen, nil)
	return nil
}

// stopSource stops (or pauses) the source machine: no more writes.
func stopSource(ctx context.Context, j *job, name string, md *machineData) error {
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil {
		return err
	}
	action := "stop"
	if m.Spec.Driver.Stop == "" && m.Spec.SourceDriver == "" {
		action, md.UsedPause = "pause", true
	}
	if !j.e.Agents.Connected(md.SourceAgent) {
		return unavailable("the source agent of %s is not connected", name)
	}
	if _, err := j.sourceDriver(ctx, name, md.SourceAgent, action); err != nil {
		return refuse("could not %s the source machine: %w", action, err)
	}
	j.r.Note("%s: source %s; no more writes", name, map[string]string{"stop": "stopped", "pause": "paused"}[action])
	return nil
}

// finalCycle takes the cycle that holds every write of the stopped source.
func finalCycle(ctx context.Context, j *job, name string, md *machineData) error {
	if md.Point != 0 {
		return nil
	}
	var resp msg.CycleNowResponse
	if err := j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodCycleNow, msg.CycleNowRequest{Machine: name}, &resp); err != nil {
		return refuse("the final cycle failed: %w", err)
	}
	md.Point = resp.PointID
	j.r.MachineNote(name, fmt.Sprintf("planned: final point %d holds every write (the source was stopped before it)", md.Point))
	j.r.SetMachine(name, "processed", md.Point, nil)
	return nil
}

func powerOff(ctx context.Context, j *job, name string, md *machineData) error {
	if !md.UsedPause {
		j.r.Note("%s: already powered off", name)
		return nil
	}
	j.r.Note("%s: the source has no stop command and stays paused", name)
	return nil
}
