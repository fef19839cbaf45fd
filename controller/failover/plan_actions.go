package failover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/protocol/msg"
)

// maxActionOutput bounds the output of a script action kept in the job
// (its tail).
const maxActionOutput = 16 << 10

// runActions runs a group's pre or post actions in order. An action that
// completed (recorded in the job) is not run again when the step reruns
// after a restart; a manual action waits for `ferry jobs resume`. A failed
// script fails the step: the plan stops there.
func (j *job) runActions(ctx context.Context, ps planStep) error {
	g := j.spec.Plan.Groups[slices.IndexFunc(j.spec.Plan.Groups, func(g api.PlanGroup) bool { return g.Number == ps.group })]
	acts := g.Pre
	if ps.phase == "post" {
		acts = g.Post
	}
	done := j.r.Actions()
	for i, a := range acts {
		if slices.ContainsFunc(done, func(x api.JobAction) bool {
			return x.Group == ps.group && x.Phase == ps.phase && x.Index == i && x.State == api.StepSucceeded
		}) {
			continue
		}
		rec := api.JobAction{Group: ps.group, Phase: ps.phase, Index: i, Script: a.Script, On: a.On, Manual: a.Manual,
			State: api.StepRunning, Started: time.Now()}
		j.r.SetAction(rec)
		var err error
		if a.Manual != "" {
			key := fmt.Sprintf("%s/%d", ps.name, i)
			err = j.r.WaitManual(ctx, key, ps.name, a.Manual)
		} else {
			rec.Output, rec.ExitCode, err = j.runScript(ctx, a, a.Script, j.planGroupEnv(ps.group, ps.phase))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rec.Ended = time.Now()
		if err != nil {
			rec.State, rec.Error = api.StepFailed, err.Error()
			j.r.SetAction(rec)
			if errors.Is(err, jobs.ErrWaitCancelled) {
				return err
			}
			if jobs.IsRetryable(err) {
				return err // the engine runs the step again (an agent reconnecting)
			}
			return refuse("group %d %s action %d (%s): %w", ps.group, ps.phase, i+1, actionName(a), err)
		}
		rec.State = api.StepSucceeded
		j.r.SetAction(rec)
	}
	return nil
}

func actionName(a api.PlanAction) string {
	if a.Manual != "" {
		return "manual: " + a.Manual
	}
	where := "the controller"
	if a.On != "" {
		where = "agent " + a.On
	}
	return fmt.Sprintf("script on %s", where)
}

// runScript runs a script action (or its undo) on the controller, or on
// the agent a.On names, with env added to the environment, within the
// action's timeout. It returns the output's tail and the exit code.
func (j *job) runScript(ctx context.Context, a api.PlanAction, script string, env map[string]string) (string, int, error) {
	timeout := a.Timeout.Std()
	if timeout <= 0 {
		timeout = api.DefaultPlanActionTimeout
	}
	if a.On != "" {
		ag, err := j.e.Cat.Agent(ctx, a.On)
		if errors.Is(err, catalog.ErrNotFound) {
			return "", 0, refuse("agent %s: %w", a.On, err)
		}
		if err != nil {
			return "", 0, err
		}
		if !j.e.Agents.Connected(ag.ID) {
			return "", 0, unavailable("agent %s is not connected", a.On)
		}
		cctx, cancel := context.WithTimeout(ctx, timeout+30*time.Second)
		defer cancel()
		var resp msg.PlanScriptResponse
		err = j.e.Agents.Call(cctx, ag.ID, msg.MethodPlanScript, msg.PlanScriptRequest{Command: script, Env: env, Timeout: timeout}, &resp)
		return tail(resp.Output), resp.ExitCode, err
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, "sh", "-c", script)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case cctx.Err() == context.DeadlineExceeded:
		return tail(out.String()), -1, refuse("timed out after %s", timeout)
	case errors.As(err, &ee):
		code = ee.ExitCode()
		err = refuse("exit code %d", code)
	case err != nil:
		err = refuse("%w", err)
	}
	return tail(out.String()), code, err
}

func tail(s string) string {
	if len(s) > maxActionOutput {
		return "…" + s[len(s)-maxActionOutput:]
	}
	return s
}

// undoActions runs the undo scripts of the actions that ran, newest first
// (a rollback: a cancelled plan, or a planned failover failed in phase 1).
func (j *job) undoActions(ctx context.Context) {
	done := j.r.Actions()
	for i := len(done) - 1; i >= 0; i-- {
		rec := done[i]
		if rec.State != api.StepSucceeded || rec.Undone || rec.Script == "" {
			continue
		}
		a, ok := j.planAction(rec)
		if !ok || a.Undo == "" {
			continue
		}
		env := j.planGroupEnv(rec.Group, rec.Phase)
		env["FERRY_UNDO"] = "1"
		out, _, err := j.runScript(ctx, a, a.Undo, env)
		if err != nil {
			j.r.Note("undo of group %d %s action %d failed: %v: %s", rec.Group, rec.Phase, rec.Index+1, err, out)
			continue
		}
		rec.Undone = true
		rec.Output += "\n--- undo ---\n" + out
		j.r.SetAction(rec)
	}
}

// planAction finds the plan action a job record is about.
func (j *job) planAction(rec api.JobAction) (api.PlanAction, bool) {
	for _, g := range j.spec.Plan.Groups {
		if g.Number != rec.Group {
			continue
		}
		acts := g.Pre
		if rec.Phase == "post" {
			acts = g.Post
		}
		if rec.Index < len(acts) {
			return acts[rec.Index], true
		}
	}
	return api.PlanAction{}, false
}
