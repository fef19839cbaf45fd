package failover

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/controller/lifecycle"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

// Disk set names at the target (apply.ValidSetName).
const (
	setStaged = "staged"
	setLive   = "live"
)

func liveSet(string) string          { return setLive }
func testSet(jobID string) string    { return "test-" + jobID }
func sameName(machine string) string { return machine }
func testName(machine string) string { return machine + "-test" }

func (j *job) targetStatus(ctx context.Context, md *machineData, name string) (msg.TargetStatusResponse, error) {
	var st msg.TargetStatusResponse
	if !j.e.Agents.Connected(md.TargetAgent) {
		return st, unavailable("the target agent of %s is not connected", md.Target)
	}
	err := j.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: md.Dir, Machine: name}, &st)
	return st, err
}

func (j *job) target(ctx context.Context, md *machineData) (api.Target, error) {
	t, _, err := j.e.Cat.Target(ctx, md.Target)
	return t, err
}

// driver runs a target driver command for the machine's set.
func (j *job) driver(ctx context.Context, md *machineData, name, action string, env map[string]string) (msg.DriverResponse, error) {
	return j.driverFor(ctx, md, name, md.Set, md.DriverName, action, env)
}

func (j *job) driverFor(ctx context.Context, md *machineData, name, set, driverName, action string, env map[string]string) (msg.DriverResponse, error) {
	t, err := j.target(ctx, md)
	if err != nil {
		return msg.DriverResponse{}, err
	}
	var hyp msg.Hypervisor
	if t.MapsNetworks() {
		m, err := j.e.Cat.Machine(ctx, name)
		if err != nil {
			return msg.DriverResponse{}, err
		}
		m.Spec.IPs = api.OverrideIPs(m.Spec.IPs, j.spec.Plan.IPsOf(name))
		hyp = targetHypervisor(m, t, driverName, env["FERRY_TEST"] == "1", diskPaths(env))
	}
	var resp msg.DriverResponse
	err = j.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetDriver, msg.TargetDriverRequest{
		Machine: driverName, Action: action, Commands: msg.Driver(t.Exec), Env: env,
		Ref: &msg.TargetRef{Dir: md.Dir, Machine: name, Set: set}, Hypervisor: hyp}, &resp)
	return resp, err
}

// driverSaysRunning asks the target driver's status for a machine (false
// when the target has no status command).
func (j *job) driverSaysRunning(ctx context.Context, md *machineData, name, set, driverName string) (bool, error) {
	t, err := j.target(ctx, md)
	if err != nil || !hasStatus(t) {
		return false, err
	}
	env := map[string]string{"FERRY_JOB": j.r.ID(), "FERRY_KIND": j.r.Kind(), "FERRY_MACHINE": driverName,
		"FERRY_TARGET": t.Name, "FERRY_SET": set}
	resp, err := j.driverFor(ctx, md, name, set, driverName, "status", env)
	if err != nil {
		return false, err
	}
	return resp.Status == "running", nil
}

// env is the driver's environment for the machine's set. For a start
// (starting) the disks are first written in the target's format when it is
// not raw; other actions name the copies a start made.
func (j *job) env(ctx context.Context, md *machineData, name string, starting bool) (map[string]string, error) {
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil {
		return nil, err
	}
	t, err := j.target(ctx, md)
	if err != nil {
		return nil, err
	}
	st, err := j.targetStatus(ctx, md, name)
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, d := range st.Sets[md.Set].Disks {
		paths = append(paths, d.Path)
	}
	if t.Format != "" && t.Format != "raw" {
		if starting {
			if paths, err = j.convert(ctx, md, name, t.Format); err != nil {
				return nil, err
			}
		} else {
			for i, p := range paths {
				paths[i] = msg.FormatCopyPath(p, t.Format)
			}
		}
	}
	env := driverEnv(j.r.ID(), j.r.Kind(), m, t, md.Point, paths, j.def.test, md.Set)
	env["FERRY_MACHINE"] = md.DriverName
	if p := j.spec.Plan; p != nil {
		env["FERRY_PLAN"], env["FERRY_GROUP"] = p.Name, fmt.Sprint(p.GroupOf(name))
	}
	return env, nil
}

// convert has the target agent write the set's disks in the format the
// target's hypervisor wants, and returns their paths. The agent keeps a
// copy it made before (the machine may run on it), so a start retried
// after a restart converts nothing again.
func (j *job) convert(ctx context.Context, md *machineData, name, format string) ([]string, error) {
	start := time.Now()
	var resp msg.TargetConvertResponse
	err := j.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetConvert, msg.TargetConvertRequest{
		Ref: msg.TargetRef{Dir: md.Dir, Machine: name, Set: md.Set}, Format: format}, &resp)
	if err != nil {
		return nil, fmt.Errorf("writing %s's disks as %s: %w", name, format, err)
	}
	if resp.Bytes > 0 {
		j.r.Note("%s: disks written as %s (%d bytes of data) in %s", name, format, resp.Bytes, time.Since(start).Round(time.Millisecond))
	}
	return resp.Paths, nil
}

// cloneStaged makes the test set a clone of the staged replica when that
// replica is usable (the move then starts from its point).
func cloneStaged(ctx context.Context, j *job, name string, md *machineData) error {
	st, err := j.targetStatus(ctx, md, name)
	if err != nil {
		return err
	}
	if _, ok := st.Sets[md.Set]; ok {
		return nil
	}
	staged, ok := st.Sets[setStaged]
	if !ok || staged.MovingTo != 0 || staged.Written {
		j.r.Note("%s: no usable staged replica; the test disks are written from the point", name)
		return nil
	}
	var resp msg.TargetCloneResponse
	if err := j.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetClone, msg.TargetCloneRequest{Dir: md.Dir, Machine: name, To: md.Set}, &resp); err != nil {
		return err
	}
	if resp.Reflinked {
		j.r.Note("%s: test disks are reflink clones of the staged replica (point %d)", name, staged.Point)
	} else {
		j.r.Note("%s: test disks copied from the staged replica (%d bytes; no reflink here)", name, resp.Bytes)
	}
	return nil
}

// moveInPlace moves the machine's own set (a test clone, a change-point's
// live disks) to the job's point.
func moveInPlace(ctx context.Context, j *job, name string, md *machineData) error {
	return j.move(ctx, name, md, false)
}

// moveAndPromote brings the staged replica (or a live set a failed or
// interrupted failover left, no machine running on it) to the job's
// point, and promotes staged to live.
func moveAndPromote(ctx context.Context, j *job, name string, md *machineData) error {
	return j.move(ctx, name, md, true)
}

func (j *job) move(ctx context.Context, name string, md *machineData, fromStaged bool) error {
	// A staging move that began before this job held the machine ends
	// first; the status read next is then current.
	unlock := j.e.lockMoves(name)
	defer unlock()
	st, err := j.targetStatus(ctx, md, name)
	if err != nil {
		return err
	}
	from := md.Set
	if fromStaged {
		from = setStaged
		if live, ok := st.Sets[setLive]; ok {
			if live.Point == md.Point && live.MovingTo == 0 {
				return nil // moved and promoted before a restart
			}
			if err := j.refuseRunningLive(ctx, md, name, st); err != nil {
				return err
			}
			from = setLive
		}
	}
	cur, exists := st.Sets[from]
	mv := Move{AgentID: md.TargetAgent, Ref: msg.TargetRef{Dir: md.Dir, Machine: name, Set: from}, Machine: name,
		SetPoint: cur.Point, From: cur.Point, MovingTo: cur.MovingTo, To: md.Point, Create: !exists, JobID: j.r.ID(), Progress: j.r.Progress}
	// On a target of another format the machine ran on the format copies
	// (target.convert): the raw files still hold their point, and the move
	// (which deletes the copies) starts from it.
	t, err := j.target(ctx, md)
	if err != nil {
		return err
	}
	rawKept := cur.Written && t.Format != "" && t.Format != "raw"
	mv.Force = rawKept
	if cur.Written && !rawKept {
		mv.From = 0
	}
	if md.Writes != 0 && !rawKept {
		mv.From = md.Writes // the set equals the point that kept its writes
	}
	start := time.Now()
	res, err := j.e.move(ctx, mv)
	if err != nil {
		return err
	}
	j.r.Note("%s: %d blocks (%d bytes) and %d zero blocks rewritten from point %d to %d in %s", name, res.Blocks, res.Bytes, res.ZeroBlocks, mv.From, md.Point, time.Since(start).Round(time.Millisecond))
	if from == setStaged && md.Set == setLive {
		if err := j.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetPromote, msg.TargetRef{Dir: md.Dir, Machine: name, Set: setStaged}, &struct{}{}); err != nil {
			return err
		}
	}
	j.r.SetMachine(name, "moved", md.Point, nil)
	return nil
}

// startTarget starts the machine at the target and records it as the
// kind's next state. The driver's start runs unless this job's own earlier
// attempt ran it (md.Started, recorded before the start): a status of
// "running" before that is about another machine of the same name, which
// Ferry never started.
func startTarget(ctx context.Context, j *job, name string, md *machineData) error {
	env, err := j.env(ctx, md, name, true)
	if err != nil {
		return err
	}
	t, err := j.target(ctx, md)
	if err != nil {
		return err
	}
	running := func() (bool, error) {
		if !hasStatus(t) {
			return false, nil
		}
		resp, err := j.driver(ctx, md, name, "status", env)
		return err == nil && resp.Status == "running", err
	}
	already := false
	if md.Started {
		already, _ = running()
	}
	if !already {
		if !md.Started {
			md.Started = true
			if err := j.saveMachineData(name, md); err != nil {
				return err
			}
		}
		if _, err := j.driver(ctx, md, name, "start", env); err != nil {
			if jobs.IsRetryable(err) { // a hypervisor driver's transient or timeout failure
				return fmt.Errorf("the target driver could not start %s: %w", md.DriverName, err)
			}
			return refuse("the target driver could not start %s: %w", md.DriverName, err)
		}
		if hasStatus(t) {
			deadline := time.Now().Add(5 * time.Minute)
			// A driver whose status lags its start a moment (machines of a
			// plan group starting at once) is asked again soon; one that
			// takes longer, every 500 ms.
			wait := 20 * time.Millisecond
			for {
				ok, err := running()
				if ok {
					break
				}
				if time.Now().After(deadline) {
					return refuse("%s did not report running within 5 minutes (last: %v)", md.DriverName, err)
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(wait):
				}
				wait = min(2*wait, 500*time.Millisecond)
			}
		} else {
			j.r.Note("%s: the target driver has no status command; started when start returned", name)
		}
	}
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil {
		return err
	}
	if err := j.advance(&m); err != nil {
		return err
	}
	m.Failover = &api.FailoverInfo{Job: j.r.ID(), Target: md.Target, PointID: md.Point, Set: md.Set}
	if j.def.test {
		m.Failover.TestName = md.DriverName
	}
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	j.r.SetMachine(name, "running", md.Point, nil)
	return nil
}

// advance sets the machine's state to the one the lifecycle table gives
// for the kind's action; a machine failed over runs at the target.
func (j *job) advance(m *catalog.Machine) error {
	r := lifecycle.Lookup(m.State, j.def.action)
	if !r.Allowed() {
		if lifecycle.Reaches(j.def.action, m.State) {
			return nil // an earlier attempt of the step got there
		}
		err := lifecycle.Check(m.Name, m.State, j.def.action)
		return &Refusal{Msg: err.Error(), Err: err}
	}
	m.State = r.Next
	if r.Next == catalog.StateFailedOver {
		m.ActiveSite = catalog.SiteRecovery
	}
	return nil
}

// saveMachineData records md durably before the step relies on it.
func (j *job) saveMachineData(name string, md *machineData) error {
	if j.saver != nil {
		return j.saver.save(j.r, name, md)
	}
	var d jobData
	if err := j.r.Data(&d); err != nil {
		return err
	}
	if d.M == nil {
		d.M = map[string]*machineData{}
	}
	d.M[name] = md
	return j.r.SetData(d)
}

// stopTarget stops the machine at the target.
func stopTarget(ctx context.Context, j *job, name string, md *machineData) error {
	if !j.e.Agents.Connected(md.TargetAgent) {
		return unavailable("the target agent of %s is not connected", md.Target)
	}
	env, err := j.env(ctx, md, name, false)
	if err != nil {
		return err
	}
	t, err := j.target(ctx, md)
	if err != nil {
		return err
	}
	if hasStatus(t) {
		if resp, err := j.driver(ctx, md, name, "status", env); err == nil && resp.Status != "running" {
			return nil
		}
	}
	if !md.StoppedTarget {
		md.StoppedTarget = true
		if err := j.saveMachineData(name, md); err != nil {
			return err
		}
	}
	if _, err := j.driver(ctx, md, name, "stop", env); err != nil {
		return refuse("could not stop %s at the target: %w", md.DriverName, err)
	}
	return nil
}

// stopTest is cleanup's first step: the test failover's record, then a stop.
func stopTest(ctx context.Context, j *job, name string, md *machineData) error {
	if err := loadFailover(ctx, j, name, md); err != nil {
		return err
	}
	return stopTarget(ctx, j, name, md)
}

func (j *job) removeSet(ctx context.Context, md *machineData, name, set string) error {
	err := j.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetRemove, msg.TargetRef{Dir: md.Dir, Machine: name, Set: set}, &struct{}{})
	if errors.Is(err, protocol.ErrNotFound) {
		return nil
	}
	return err
}

// removeTest deletes the test set and returns the machine to the state
// the lifecycle table gives for a cleanup.
func removeTest(ctx context.Context, j *job, name string, md *machineData) error {
	if err := removeTestDefinition(ctx, j, name, md); err != nil {
		return err
	}
	if err := j.removeSet(ctx, md, name, md.Set); err != nil {
		return err
	}
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil {
		return err
	}
	if err := j.advance(&m); err != nil {
		return err
	}
	m.Failover = nil
	return j.e.Cat.UpdateMachine(ctx, m)
}

// keepWrites ships the target's disks as a named point before they move.
func keepWrites(ctx context.Context, j *job, name string, md *machineData) error {
	if md.Writes != 0 {
		return nil
	}
	var resp msg.TargetShipResponse
	err := j.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetShip, msg.TargetShipRequest{
		Ref: msg.TargetRef{Dir: md.Dir, Machine: name, Set: md.Set}, Name: "target-writes-" + j.r.ID()}, &resp)
	if err != nil {
		return err
	}
	md.Writes = resp.PointID
	j.r.MachineNote(name, fmt.Sprintf("the writes made at the target were kept as point %d (target-writes-%s)", resp.PointID, j.r.ID()))
	return nil
}

// commitPoints deletes the machine's recovery points but the two a later
// re-protect needs to stay delta-only — the point the machine's disks at
// the recovery site started from, and the newest point (what the home
// disks hold, but for writes after it) — says which it deleted and which
// it kept, and records the state the lifecycle table gives for a commit.
// Retention leaves a committed machine's points alone; unprotect releases
// them.
// CommitSplit is the rule commitPoints follows, for `ferry commit`'s
// preview too: of a machine's points (oldest first) it deletes all but the
// one the machine runs (point), the newest and the recovery-divergent
// ones.
func CommitSplit(pts []storage.Point, point int64) (deleted, kept []storage.Point) {
	for i, p := range pts {
		if p.ID == point || i == len(pts)-1 || strings.HasPrefix(p.Name, RecoveryDivergentPrefix) {
			kept = append(kept, p)
		} else {
			deleted = append(deleted, p)
		}
	}
	return deleted, kept
}

func commitPoints(ctx context.Context, j *job, name string, md *machineData) error {
	pts, err := j.e.Repo.Points(ctx, name)
	if err != nil {
		return err
	}
	var deleted, kept []string
	del, keep := CommitSplit(pts, md.Point)
	for _, p := range keep {
		kept = append(kept, fmt.Sprint(p.ID))
	}
	for _, p := range del {
		if err := j.e.Repo.DeletePoint(ctx, p.ID); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		deleted = append(deleted, fmt.Sprint(p.ID))
	}
	if len(deleted) > 0 {
		j.r.MachineNote(name, fmt.Sprintf("deleted recovery points %s", strings.Join(deleted, ", ")))
	}
	if len(kept) > 0 {
		j.r.MachineNote(name, fmt.Sprintf("kept point(s) %s for a later re-protect (ferry reprotect %s) to move only changed blocks; 'ferry unprotect %s' releases them", strings.Join(kept, ", "), name, name))
	}
	m, err := j.e.Cat.Machine(ctx, name)
	if err != nil {
		return err
	}
	if err := j.advance(&m); err != nil {
		return err
	}
	if err := j.e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	j.r.SetMachine(name, "committed", 0, nil)
	return nil
}
