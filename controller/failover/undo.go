package failover

import (
	"context"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/protocol/msg"
)

// stopIfStarted stops a machine this job started at the target.
func (j *job) stopIfStarted(ctx context.Context, md *machineData, name string) {
	if !md.Started {
		return
	}
	if env, err := j.env(ctx, md, name, false); err == nil {
		if _, err := j.driver(ctx, md, name, "stop", env); err != nil {
			j.r.Note("%s: stopping the machine at the target failed: %v", name, err)
		}
	}
}

// rollbackTest removes a cancelled test failover's set.
func rollbackTest(ctx context.Context, j *job, name string, md *machineData) error {
	j.stopIfStarted(ctx, md, name)
	return j.removeSet(ctx, md, name, md.Set)
}

// rollbackLive undoes a cancelled live failover: the machine it started is
// stopped, live is demoted to staged, and the staged set returns to the
// point it held before the job (or goes, if the job created it).
func rollbackLive(ctx context.Context, j *job, name string, md *machineData) error {
	j.stopIfStarted(ctx, md, name)
	st, err := j.targetStatus(ctx, md, name)
	if err != nil {
		return err
	}
	if _, ok := st.Sets[setLive]; ok {
		if err := j.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetDemote, msg.TargetRef{Dir: md.Dir, Machine: name, Set: setLive}, &struct{}{}); err != nil {
			return err
		}
		if st, err = j.targetStatus(ctx, md, name); err != nil {
			return err
		}
	}
	staged, ok := st.Sets[setStaged]
	if !ok {
		return nil
	}
	if !md.StagedExisted {
		return j.removeSet(ctx, md, name, setStaged)
	}
	if staged.Point == md.StagedFrom && staged.MovingTo == 0 && !staged.Written {
		return nil
	}
	mv := Move{AgentID: md.TargetAgent, Ref: msg.TargetRef{Dir: md.Dir, Machine: name, Set: setStaged}, Machine: name,
		SetPoint: staged.Point, From: staged.Point, MovingTo: staged.MovingTo, To: md.StagedFrom, JobID: j.r.ID()}
	if staged.Written {
		mv.From = 0
	}
	_, err = j.e.move(ctx, mv)
	return err
}

// rollbackChangePoint returns a cancelled change-point's machine to where
// it was: its disks back to what it ran on (the machine's own writes,
// kept as point md.Writes, when the move already ran or began), then the
// machine started again if the job stopped it.
func rollbackChangePoint(ctx context.Context, j *job, name string, md *machineData) error {
	if md.Writes != 0 {
		if err := j.moveBack(ctx, md, name); err != nil {
			return err
		}
	}
	if !md.StoppedTarget && !md.Started {
		return nil // the job never stopped the machine
	}
	md.Point = md.RanOn
	env, err := j.env(ctx, md, name, true)
	if err != nil {
		return err
	}
	t, err := j.target(ctx, md)
	if err != nil {
		return err
	}
	if hasStatus(t) {
		if resp, err := j.driver(ctx, md, name, "status", env); err == nil && resp.Status == "running" {
			return nil // started by an earlier attempt of the rollback
		}
	}
	if _, err := j.driver(ctx, md, name, "start", env); err != nil {
		if jobs.IsRetryable(err) {
			return fmt.Errorf("restarting %s at the target: %w", md.DriverName, err)
		}
		return refuse("restarting %s at the target failed: %w", md.DriverName, err)
	}
	if hasStatus(t) {
		deadline := time.Now().Add(5 * time.Minute)
		for {
			resp, err := j.driver(ctx, md, name, "status", env)
			if err == nil && resp.Status == "running" {
				break
			}
			if time.Now().After(deadline) {
				return refuse("%s did not report running within 5 minutes (last: %v)", md.DriverName, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	j.r.Note("%s: the machine runs again on the disks it had (the writes kept as point %d)", name, md.Writes)
	return nil
}

// moveBack brings a change-point's live disks back to the point that kept
// the machine's writes, unless they still hold those writes.
func (j *job) moveBack(ctx context.Context, md *machineData, name string) error {
	unlock := j.e.lockMoves(name)
	defer unlock()
	st, err := j.targetStatus(ctx, md, name)
	if err != nil {
		return err
	}
	live, ok := st.Sets[md.Set]
	if !ok {
		return refuse("the %s disks of %s are gone from the target", md.Set, name)
	}
	if live.MovingTo == 0 && (live.Written || live.Point == md.Writes) {
		return nil // never moved (the machine's own writes), or moved back
	}
	mv := Move{AgentID: md.TargetAgent, Ref: msg.TargetRef{Dir: md.Dir, Machine: name, Set: md.Set}, Machine: name,
		SetPoint: live.Point, From: live.Point, MovingTo: live.MovingTo, To: md.Writes, JobID: j.r.ID()}
	if live.Point != md.Point {
		// The move to md.Point had not completed: the set still holds
		// the kept writes, plus part of that move (MovingTo).
		mv.From = md.Writes
	}
	res, err := j.e.move(ctx, mv)
	if err != nil {
		return err
	}
	j.r.Note("%s: %d blocks moved back to point %d (the writes kept before the move)", name, res.Blocks+res.ZeroBlocks, md.Writes)
	return nil
}

// revert puts a machine whose failover did not complete back to
// replicating (Finish, for kinds with revertOnFailure).
func (j *job) revert(ctx context.Context, name string, md *machineData) {
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil || m.Failover == nil || m.Failover.Job != j.r.ID() {
		return
	}
	// A machine the job started at the target (its status never said
	// running, or a later step failed) is stopped first: the source may
	// run again, and a test's disks are about to go.
	targetStopped := true
	if md.Started && md.TargetAgent != "" {
		if err := stopTarget(ctx, j, name, md); err != nil {
			targetStopped = false
			j.r.Note("%s: stopping the machine started at the target failed: %v", name, err)
		} else {
			j.r.Note("%s: the machine started at the target was stopped", name)
		}
	}
	if j.def.restartSource && md.SourceAgent != "" {
		if !targetStopped {
			// Never two running copies: the admin decides.
			j.r.Note("%s: the source is not restarted, since the machine at the target may be running; stop it there, then start the source", name)
		} else {
			action := "start"
			if md.UsedPause {
				action = "resume"
			}
			// A source agent still reconnecting (the controller restarted
			// mid-rollback) is waited for, within its grace period.
			if until, _ := j.agentGrace(ctx, md.SourceAgent, md.SourceSeen); !j.e.Agents.Connected(md.SourceAgent) && !until.IsZero() {
				j.waitAgent(ctx, md.SourceAgent, until, false)
			}
			if _, err := j.sourceDriver(ctx, name, md.SourceAgent, action); err != nil {
				j.r.Note("%s: restarting the source failed: %v", name, err)
			} else {
				j.r.Note("%s: the source was restarted", name)
			}
		}
	}
	if j.def.test && md.TargetAgent != "" {
		if err := j.removeSet(ctx, md, name, md.Set); err != nil {
			j.r.Note("%s: removing the test disks failed: %v", name, err)
		}
	}
	m.Failover = nil
	if m.State == catalog.StateProtected || m.State == catalog.StateTestFailedOver {
		m.State = catalog.StateProtected
	}
	if m.State == catalog.StateFailedOver {
		// This job failed it over (Failover.Job, checked above) and is
		// undone: a plan cancelled after the machine's group completed.
		m.State, m.ActiveSite = catalog.StateProtected, catalog.SiteHome
	}
	m.Resync = j.def.resyncOnFailure // replication restarts with a hash resync
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		j.r.Note("%s: %v", name, err)
		return
	}
	if err := j.e.Push(ctx, m.AgentID); err != nil {
		j.r.Note("%s: replication resumes when the source agent reconnects (%v)", name, err)
	}
}
