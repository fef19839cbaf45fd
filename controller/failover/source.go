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
	reached, why, err := j.awaitSource(ctx, md)
	if err != nil {
		return err
	}
	if reached {
		var resp msg.CycleNowResponse
		cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		err := e.Agents.Call(cctx, md.SourceAgent, msg.MethodCycleNow, msg.CycleNowRequest{Machine: name}, &resp)
		cancel()
		switch {
		case err == nil:
			chosen = resp.PointID
			j.r.MachineNote(name, fmt.Sprintf("latest: the source agent was reachable%s; a fresh cycle made point %d", why, chosen))
		case jobs.IsRetryable(err):
			// The source is reachable but busy (a scheduled cycle still
			// runs): wait for the fresh point; the engine retries the step
			// until the job's deadline, then the job fails and says so.
			return fmt.Errorf("latest: waiting for a fresh point from the source (%w); the job fails at its deadline (%s) unless one comes — give --point latest-processed to use the newest stored point instead", err, j.r.Deadline().Format(time.RFC3339))
		default:
			j.r.MachineNote(name, fmt.Sprintf("latest: the source agent was reachable but the fresh cycle failed (%v); using the newest complete point", err))
		}
	} else {
		j.r.MachineNote(name, fmt.Sprintf("latest: the source agent was unreachable (%s); using the newest complete point (an incomplete cycle is never used)", why))
	}
	pts, err := e.Repo.Points(ctx, name)
	if err != nil {
		return err
	}
	if chosen == 0 {
		if len(pts) == 0 {
			return refuse("machine %s has no recovery point", name)
		}
		// The newest point that reads no damaged data; with
		// --allow-damaged, the newest point whatever it reads.
		chosen = pts[len(pts)-1].ID
		if !j.spec.Req.AllowDamaged {
			if p, err := points.Pick(pts, points.SpecLatest, name); err == nil {
				chosen = p.ID
			}
		}
	}
	p, err := e.Repo.Point(ctx, chosen)
	if err != nil {
		return err
	}
	if err := j.checkConsistency(ctx, name, p); err != nil {
		return err
	}
	if err := checkDamaged(p, j.spec.Req.AllowDamaged); err != nil {
		return err
	}
	md.Point = chosen
	j.r.SetMachine(name, "processed", chosen, nil)
	return nil
}

// DefaultSourceGrace is how long `latest` waits for a source agent that
// is expected back: the agent's longest reconnect backoff (30 s) plus a
// keepalive interval (10 s).
const DefaultSourceGrace = 40 * time.Second

// awaitSource reports whether the source agent is connected, after a
// bounded grace period (within the job's deadline) when it is expected
// back (agentGrace). why says which case applied, for the job's note. A
// cancel asked for while waiting ends the wait with a retryable error:
// the engine then rolls the job back.
func (j *job) awaitSource(ctx context.Context, md *machineData) (reached bool, why string, err error) {
	if j.e.Agents.Connected(md.SourceAgent) {
		return true, "", nil
	}
	start := time.Now()
	until, why := j.agentGrace(ctx, md.SourceAgent, md.SourceSeen)
	if d := j.r.Deadline(); !d.IsZero() && d.Before(until) {
		until = d
	}
	if until.IsZero() {
		return false, why, nil
	}
	ok, err := j.waitAgent(ctx, md.SourceAgent, until, true)
	switch {
	case err != nil:
		return false, "", err
	case ok:
		return true, fmt.Sprintf(" after a wait of %s (%s)", time.Since(start).Round(time.Millisecond), why), nil
	}
	return false, fmt.Sprintf("%s, but it did not reconnect within the grace period of %s", why, until.Sub(start).Round(time.Second)), nil
}

// agentGrace says until when a job waits for a disconnected agent that is
// expected back, and why: the job saw it connected (seen: the controller
// restarted or the link dropped since), the controller itself started
// less than the grace ago (every known agent is reconnecting), or the
// agent disconnected less than the grace ago. A zero time: not expected
// back (why says so).
func (j *job) agentGrace(ctx context.Context, agentID string, seen bool) (time.Time, string) {
	e := j.e
	now := time.Now()
	grace := e.SourceGrace
	if grace <= 0 {
		grace = DefaultSourceGrace
	}
	a, err := e.Cat.Agent(ctx, agentID)
	switch {
	case err != nil || a.Revoked:
		return time.Time{}, "it is not a known agent of this controller"
	case seen:
		return now.Add(grace), "it was connected earlier in this job"
	case !e.Started.IsZero() && now.Before(e.Started.Add(grace)):
		return e.Started.Add(grace), "the controller restarted and the agent is reconnecting"
	case !a.LastSeen.IsZero() && now.Before(a.LastSeen.Add(grace)):
		return a.LastSeen.Add(grace), "the agent disconnected recently and is reconnecting"
	}
	return time.Time{}, fmt.Sprintf("not connected, last seen %s", a.LastSeen.UTC().Format(time.RFC3339))
}

// waitAgent waits until the agent is connected (true) or until passes
// (false). With cancellable, a cancel of the job ends the wait with a
// retryable error.
func (j *job) waitAgent(ctx context.Context, agentID string, until time.Time, cancellable bool) (bool, error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if j.e.Agents.Connected(agentID) {
			return true, nil
		}
		if !time.Now().Before(until) {
			return false, nil
		}
		if cancellable && j.r.CancelRequested() {
			return false, unavailable("cancelled while waiting for agent %s to reconnect", agentID)
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-tick.C:
		}
	}
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
	if !j.e.Agents.Connected(md.SourceAgent) {
		return unavailable("the final cycle needs the source agent of %s, which is not connected", name)
	}
	var resp msg.CycleNowResponse
	if err := j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodCycleNow, msg.CycleNowRequest{Machine: name}, &resp); err != nil {
		if jobs.IsRetryable(err) {
			// A dropped link or a busy agent: the engine retries the step
			// until the job's deadline.
			return fmt.Errorf("the final cycle: %w", err)
		}
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
