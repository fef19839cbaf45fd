package failover

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Fencing (docs/failover.md "Unplanned failback and fencing"): an
// unplanned failback that could not reach the recovery site records, in
// the machine's round trip, that the copy there may still run
// (catalog.Fence). When that site's agent connects again the controller
// fences it before anything else: the machine there is stopped through
// the target driver, then its disks — which may hold writes made after
// the point the machine came home to — are kept as the point
// recovery-divergent-<job>. Only then does the agent get its configuration
// (controller/fence.go), and a forward re-protect waits for the fence.

// RecoveryDivergentPrefix names the point that keeps the recovery site's
// disks before anything overwrites them after an unplanned failback.
const RecoveryDivergentPrefix = "recovery-divergent-"

// fenceStopWait bounds how long a fence waits for the driver's status to
// leave "running" after its stop.
const fenceStopWait = 2 * time.Minute

// Fence fences every machine whose fence is pending at a site the agent
// serves. It returns the first error; the others are tried regardless.
func (e *Engine) Fence(ctx context.Context, agentID string) error {
	ms, err := e.Cat.Machines(ctx, "")
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range ms {
		if m.RoundTrip == nil || m.RoundTrip.Fence == nil || m.RoundTrip.Fence.Done {
			continue
		}
		_, a, err := e.Cat.Target(ctx, m.RoundTrip.Fence.Target)
		if err != nil || a != agentID {
			continue
		}
		if err := e.FenceMachine(ctx, m.Name); err != nil {
			errs = append(errs, fmt.Errorf("fencing %s: %w", m.Name, err))
		}
	}
	return errors.Join(errs...)
}

// FenceMachine fences one machine now (a no-op when its fence is done or
// none is owed): stop at the recovery site, then keep its disks as
// recovery-divergent-<job>. Each part is recorded in the catalog as it
// completes, so a fence interrupted anywhere is finished by the next try.
func (e *Engine) FenceMachine(ctx context.Context, name string) error {
	unlock := e.lockMoves(name)
	defer unlock()
	m, err := e.Cat.Machine(ctx, name)
	if err != nil {
		return err
	}
	if m.RoundTrip == nil || m.RoundTrip.Fence == nil || m.RoundTrip.Fence.Done {
		return nil
	}
	f := m.RoundTrip.Fence
	t, agentID, err := e.Cat.Target(ctx, f.Target)
	if err != nil {
		return err
	}
	if !e.Agents.Connected(agentID) {
		return unavailable("the agent of the recovery site %s is not connected", t.Name)
	}
	record := func(ferr error) error {
		m, err := e.Cat.Machine(ctx, name)
		if err != nil {
			return errors.Join(ferr, err)
		}
		if m.RoundTrip == nil || m.RoundTrip.Fence == nil {
			return ferr
		}
		*m.RoundTrip.Fence = *f
		if ferr != nil {
			m.RoundTrip.Fence.LastError = ferr.Error()
		}
		if err := e.Cat.UpdateMachine(ctx, m); err != nil {
			return errors.Join(ferr, err)
		}
		return ferr
	}
	var st msg.TargetStatusResponse
	if err := e.Agents.Call(ctx, agentID, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: t.Dir, Machine: name}, &st); err != nil {
		return record(err)
	}
	live, hasLive := st.Sets[setLive]
	if f.StoppedAt.IsZero() {
		if err := e.fenceStop(ctx, m, t, agentID, live.Disks, f.Job); err != nil {
			return record(err)
		}
		f.StoppedAt, f.LastError = e.Now(), ""
		if err := record(nil); err != nil {
			return err
		}
		e.Log.Info("fence: the machine at the recovery site is stopped", "machine", name, "target", t.Name, "job", f.Job)
	}
	if hasLive && f.Point == 0 {
		var resp msg.TargetShipResponse
		err := e.Agents.Call(ctx, agentID, msg.MethodTargetShip, msg.TargetShipRequest{
			Ref: msg.TargetRef{Dir: t.Dir, Machine: name, Set: setLive}, Name: RecoveryDivergentPrefix + f.Job}, &resp)
		if err != nil {
			return record(fmt.Errorf("keeping the recovery site's disks: %w", err))
		}
		f.Point = resp.PointID
		e.Log.Info("fence: the recovery site's disks are kept", "machine", name, "point", f.Point, "name", RecoveryDivergentPrefix+f.Job)
	}
	f.Done, f.LastError = true, ""
	return record(nil)
}

// fenceStop stops the machine at the recovery site and waits for its
// status (when the driver has one) to say it no longer runs.
func (e *Engine) fenceStop(ctx context.Context, m catalog.Machine, t api.Target, agentID string, disks []msg.TargetDisk, job string) error {
	var paths []string
	for _, d := range disks {
		paths = append(paths, msg.FormatCopyPath(d.Path, t.Format))
	}
	call := func(action string) (msg.DriverResponse, error) {
		env := driverEnv(job, "fence", m, t, 0, paths, false, setLive)
		var resp msg.DriverResponse
		cctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
		defer cancel()
		err := e.Agents.Call(cctx, agentID, msg.MethodTargetDriver, msg.TargetDriverRequest{
			Machine: m.Name, Action: action, Commands: msg.Driver(t.Exec), Env: env,
			Ref: &msg.TargetRef{Dir: t.Dir, Machine: m.Name, Set: setLive}, Hypervisor: targetHypervisor(m, t, m.Name, false, paths)}, &resp)
		return resp, err
	}
	if hasStatus(t) {
		resp, err := call("status")
		if err != nil {
			return err
		}
		if resp.Status != "running" {
			return nil
		}
	}
	if t.Exec.Stop == "" && !t.MapsNetworks() {
		return fmt.Errorf("target %s's driver has no stop command: stop %s there yourself", t.Name, m.Name)
	}
	if _, err := call("stop"); err != nil {
		return err
	}
	if !hasStatus(t) {
		return nil
	}
	deadline := time.Now().Add(fenceStopWait)
	for {
		resp, err := call("status")
		if err == nil && resp.Status != "running" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the machine at %s still reports %q (%v) after its stop", t.Name, resp.Status, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// fenceState describes a machine's fence for job notes and errors.
func fenceState(f *catalog.Fence) string {
	switch {
	case f == nil:
		return "none"
	case f.Done && f.Point != 0:
		return fmt.Sprintf("done: the machine at %s was stopped at %s and its disks kept as point %d (%s%s)",
			f.Target, f.StoppedAt.UTC().Format(time.RFC3339), f.Point, RecoveryDivergentPrefix, f.Job)
	case f.Done:
		return fmt.Sprintf("done: the machine at %s was stopped at %s (no disks there to keep)", f.Target, f.StoppedAt.UTC().Format(time.RFC3339))
	case f.LastError != "":
		return fmt.Sprintf("pending: the copy at %s may still run; it is stopped when that site's agent reconnects (last attempt: %s)", f.Target, f.LastError)
	}
	return fmt.Sprintf("pending: the copy at %s may still run; it is stopped when that site's agent reconnects", f.Target)
}

// FenceInfo is a machine's fence as `machines show` reports it (nil when
// none is owed).
func FenceInfo(m catalog.Machine) *api.Fence {
	if m.RoundTrip == nil || m.RoundTrip.Fence == nil {
		return nil
	}
	f := m.RoundTrip.Fence
	out := &api.Fence{State: "pending", Job: f.Job, Target: f.Target, Point: f.Point, Error: f.LastError, Note: fenceState(f)}
	if f.Done {
		out.State = "done"
	}
	if !f.StoppedAt.IsZero() {
		t := f.StoppedAt
		out.StoppedAt = &t
	}
	return out
}
