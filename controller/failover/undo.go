package failover

import (
	"context"

	"github.com/ferrydr/ferry/controller/catalog"
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
	m.Resync = j.def.resyncOnFailure // replication restarts with a hash resync
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		j.r.Note("%s: %v", name, err)
		return
	}
	if err := j.e.Push(ctx, m.AgentID); err != nil {
		j.r.Note("%s: replication resumes when the source agent reconnects (%v)", name, err)
	}
}
