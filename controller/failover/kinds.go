package failover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/controller/points"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

// Job kinds.
const (
	KindFailover    = "failover"
	KindTest        = "test-failover"
	KindPlanned     = "planned-failover"
	KindCommit      = "commit"
	KindCleanup     = "cleanup"
	KindChangePoint = "change-point"
)

// Spec is what a failover-family job was asked to do (never the key).
type Spec struct {
	Machines []string            `json:"machines"`
	Req      api.FailoverRequest `json:"req"`
	Point    string              `json:"point,omitempty"` // change-point
}

// machineData is what a job remembers per machine between steps.
type machineData struct {
	Target        string `json:"target"`
	TargetAgent   string `json:"target_agent"`
	Dir           string `json:"dir"`
	SourceAgent   string `json:"source_agent"`
	Point         int64  `json:"point"`
	StagedFrom    int64  `json:"staged_from"`
	StagedExisted bool   `json:"staged_existed"`
	Set           string `json:"set"`
	DriverName    string `json:"driver_name"`
	Started       bool   `json:"started"`
	UsedPause     bool   `json:"used_pause"`
	Failed        bool   `json:"failed"`
	Writes        int64  `json:"writes,omitempty"` // change-point: the point keeping the target's writes
}

type jobData struct {
	M map[string]*machineData `json:"m"`
}

// Kinds returns the job kinds of this package, for the jobs engine.
func (e *Engine) Kinds() map[string]jobs.Kind {
	return map[string]jobs.Kind{
		KindFailover:    &failoverKind{e: e, kind: KindFailover},
		KindTest:        &failoverKind{e: e, kind: KindTest},
		KindPlanned:     &failoverKind{e: e, kind: KindPlanned},
		KindChangePoint: &failoverKind{e: e, kind: KindChangePoint},
		KindCommit:      &failoverKind{e: e, kind: KindCommit},
		KindCleanup:     &failoverKind{e: e, kind: KindCleanup},
	}
}

type failoverKind struct {
	e    *Engine
	kind string
}

func (k *failoverKind) Steps(raw json.RawMessage) ([]string, error) {
	var s Spec
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	if s.Req.DryRun {
		return []string{"prerequisites"}, nil // check, touch nothing
	}
	switch k.kind {
	case KindTest:
		return []string{"prerequisites", "process", "clone", "move", "start"}, nil
	case KindPlanned:
		return []string{"prerequisites", "stop-source", "final-cycle", "power-off", "move", "start"}, nil
	case KindChangePoint:
		return []string{"prerequisites", "stop-target", "keep-writes", "move", "start"}, nil
	case KindCommit:
		return []string{"prerequisites", "commit"}, nil
	case KindCleanup:
		return []string{"stop-test", "remove-test"}, nil
	}
	steps := []string{"prerequisites"}
	if s.Req.ShutdownSource {
		steps = append(steps, "shutdown-source")
	}
	return append(steps, "process", "move", "start"), nil
}

// Run runs one step for every machine of the job.
func (k *failoverKind) Run(ctx context.Context, r *jobs.Run, step string) error {
	var spec Spec
	if err := r.Spec(&spec); err != nil {
		return err
	}
	var d jobData
	if err := r.Data(&d); err != nil {
		return err
	}
	if d.M == nil {
		d.M = map[string]*machineData{}
	}
	var ok, failed int
	var firstErr error
	skipped := true
	for _, name := range spec.Machines {
		md := d.M[name]
		if md == nil {
			md = &machineData{}
			d.M[name] = md
		}
		if md.Failed {
			failed++
			continue
		}
		err := k.step(ctx, r, step, spec, name, md)
		if errors.Is(err, jobs.ErrSkip) {
			err = nil
		} else {
			skipped = false
		}
		if serr := r.SetData(d); serr != nil {
			return serr
		}
		if err == nil {
			ok++
			continue
		}
		var rt jobs.Retryable
		if errors.As(err, &rt) && rt.Retryable() {
			return err // the engine retries the step (steps are idempotent)
		}
		if len(spec.Machines) == 1 || k.kind == KindPlanned {
			r.SetMachine(name, "failed", 0, err)
			return err
		}
		// A plan's unplanned failover runs on despite one machine's error.
		md.Failed = true
		r.SetMachine(name, "failed", 0, err)
		r.SetData(d)
		failed++
		if firstErr == nil {
			firstErr = err
		}
	}
	if ok == 0 && failed > 0 {
		return fmt.Errorf("every machine failed: %w", firstErr)
	}
	if skipped && ok > 0 {
		return jobs.ErrSkip
	}
	return nil
}

func (k *failoverKind) step(ctx context.Context, r *jobs.Run, step string, spec Spec, name string, md *machineData) error {
	switch step {
	case "prerequisites":
		return k.prerequisites(ctx, r, spec, name, md)
	case "shutdown-source":
		return k.shutdownSource(ctx, r, name, md)
	case "process":
		return k.process(ctx, r, spec, name, md)
	case "stop-source":
		return k.stopSource(ctx, r, name, md)
	case "final-cycle":
		return k.finalCycle(ctx, r, name, md)
	case "power-off":
		return k.powerOff(ctx, r, name, md)
	case "clone":
		return k.clone(ctx, r, name, md)
	case "move":
		return k.moveStep(ctx, r, name, md)
	case "start":
		return k.start(ctx, r, name, md)
	case "stop-target", "stop-test":
		return k.stopTarget(ctx, r, name, md)
	case "keep-writes":
		return k.keepWrites(ctx, r, name, md)
	case "commit":
		return k.commit(ctx, r, name)
	case "remove-test":
		return k.removeTest(ctx, r, name, md)
	}
	return fmt.Errorf("unknown step %q", step)
}

// unavailable is a retryable error: an agent is not connected.
func unavailable(format string, args ...any) error {
	return protocol.Errorf(protocol.CodeUnavailable, format, args...)
}

func refuse(format string, args ...any) error {
	return protocol.Errorf(protocol.CodeFailedPrecondition, format, args...)
}

func (k *failoverKind) prerequisites(ctx context.Context, r *jobs.Run, spec Spec, name string, md *machineData) error {
	e := k.e
	m, err := e.Cat.Machine(ctx, name)
	if err != nil {
		return refuse("%v", err)
	}
	switch k.kind {
	case KindCommit, KindChangePoint:
		if m.State != catalog.StateFailedOver || m.Failover == nil {
			if m.State == catalog.StateCommitted {
				return refuse("machine %s: the failover was committed; its recovery points are gone, so %s is no longer possible", name, k.kind)
			}
			return refuse("machine %s is %s: %s needs a failed-over machine", name, m.State, k.kind)
		}
		t, agentID, err := e.Cat.Target(ctx, m.Failover.Target)
		if err != nil {
			return refuse("%v", err)
		}
		md.Target, md.TargetAgent, md.Dir, md.Set, md.DriverName = t.Name, agentID, t.Dir, m.Failover.Set, name
		md.Point = m.Failover.PointID
		if k.kind == KindCommit {
			return nil
		}
		p, err := points.Resolve(ctx, e.Repo, name, spec.Point)
		if err != nil {
			return refuse("%v", err)
		}
		if p.ID == md.Point {
			return refuse("machine %s already runs point %d", name, p.ID)
		}
		if !e.KeyAvailable(r.ID()) {
			_, err := e.reader(r.ID())
			return refuse("%v", err)
		}
		md.Point = p.ID
		if !e.Agents.Connected(agentID) {
			return unavailable("target agent of %s is not connected", t.Name)
		}
		return nil
	}
	if m.State != catalog.StateProtected {
		if m.State == catalog.StateTestFailedOver {
			return refuse("machine %s has a test failover running: clean it up first (ferry cleanup %s)", name, name)
		}
		return refuse("machine %s is %s: failover needs a protected machine", name, m.State)
	}
	t, agentID, err := e.machineTarget(ctx, m, spec.Req.Target)
	if err != nil {
		return err
	}
	md.Target, md.TargetAgent, md.Dir, md.SourceAgent = t.Name, agentID, t.Dir, m.AgentID
	md.Set, md.DriverName = "live", name
	if k.kind == KindTest {
		md.Set, md.DriverName = "test-"+r.ID(), name+"-test"
	}
	if !e.KeyAvailable(r.ID()) {
		_, err := e.reader(r.ID())
		return refuse("%v", err)
	}
	pts, err := e.Repo.Points(ctx, name)
	if err != nil {
		return err
	}
	if len(pts) == 0 {
		return refuse("machine %s has no recovery point yet (initial sync in progress)", name)
	}
	if k.kind == KindPlanned {
		if m.Spec.Driver.Stop == "" && m.Spec.Driver.Pause == "" {
			return refuse("planned failover of %s needs a source driver that can stop or pause it (protect with --stop or --pause)", name)
		}
		if !e.Agents.Connected(m.AgentID) {
			return unavailable("the source agent of %s is not connected: a planned failover needs it", name)
		}
	}
	if ps := spec.Req.Point; ps != "" && ps != points.SpecLatest {
		p, err := points.Pick(pts, ps, name)
		if err != nil {
			return refuse("%v", err)
		}
		if err := checkConsistency(p, spec.Req.AllowInconsistent); err != nil {
			return err
		}
		md.Point = p.ID
	}
	if !e.Agents.Connected(agentID) {
		return unavailable("target agent of %s is not connected", t.Name)
	}
	var st msg.TargetStatusResponse
	if err := e.Agents.Call(ctx, agentID, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: t.Dir, Machine: name}, &st); err != nil {
		return err
	}
	if s, ok := st.Sets["staged"]; ok && md.StagedFrom == 0 && !md.StagedExisted {
		md.StagedFrom, md.StagedExisted = s.Point, true
	}
	if spec.Req.DryRun {
		return nil
	}
	// Replication stops (live failovers) before any disk is touched; a
	// test failover lets it go on.
	m.Failover = &api.FailoverInfo{Job: r.ID(), Target: t.Name, Set: md.Set}
	if k.kind == KindTest {
		m.Failover.TestName = md.DriverName
	}
	if err := e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	if k.kind != KindTest {
		if err := e.Push(ctx, m.AgentID); err != nil {
			r.Note("could not tell the source agent to pause replication (%v); it is refused by the controller instead", err)
		}
	}
	r.SetMachine(name, "prepared", md.Point, nil)
	return nil
}

func checkConsistency(p storage.Point, allow bool) error {
	if p.Consistency == storage.Inconsistent && !allow {
		return refuse("point %d is inconsistent (its disks were read while being written); choose another point or give --allow-inconsistent", p.ID)
	}
	return nil
}

func (k *failoverKind) sourceDriver(ctx context.Context, name, agentID, action string) (msg.DriverResponse, error) {
	var resp msg.DriverResponse
	ctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	defer cancel()
	err := k.e.Agents.Call(ctx, agentID, msg.MethodDriver, msg.DriverRequest{Machine: name, Action: action}, &resp)
	return resp, err
}

func (k *failoverKind) shutdownSource(ctx context.Context, r *jobs.Run, name string, md *machineData) error {
	if !k.e.Agents.Connected(md.SourceAgent) {
		r.Note("%s: the source agent is unreachable; shutdown skipped, failover continues", name)
		return nil
	}
	if _, err := k.sourceDriver(ctx, name, md.SourceAgent, "stop"); err != nil {
		r.Note("%s: shutting the source down failed (%v); failover continues", name, err)
		return nil
	}
	r.Note("%s: source shut down", name)
	return nil
}

// process picks the point: for latest, a fresh cycle when the source can
// make one, else the newest complete point.
func (k *failoverKind) process(ctx context.Context, r *jobs.Run, spec Spec, name string, md *machineData) error {
	if md.Point != 0 {
		if ps := spec.Req.Point; ps != "" && ps != points.SpecLatest {
			return jobs.ErrSkip // a processed point was chosen: nothing to process
		}
		return nil // chosen by an earlier attempt of this step
	}
	e := k.e
	var chosen int64
	if e.Agents.Connected(md.SourceAgent) {
		var resp msg.CycleNowResponse
		cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		err := e.Agents.Call(cctx, md.SourceAgent, msg.MethodCycleNow, msg.CycleNowRequest{Machine: name}, &resp)
		cancel()
		if err == nil {
			chosen = resp.PointID
			r.MachineNote(name, fmt.Sprintf("latest: the source agent was reachable; a fresh cycle made point %d", chosen))
		} else {
			r.MachineNote(name, fmt.Sprintf("latest: the source agent was reachable but the fresh cycle failed (%v); using the newest complete point", err))
		}
	} else {
		r.MachineNote(name, "latest: the source agent was unreachable; using the newest complete point (an incomplete cycle is never used)")
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
	if err := checkConsistency(p, spec.Req.AllowInconsistent); err != nil {
		return err
	}
	md.Point = chosen
	r.SetMachine(name, "processed", chosen, nil)
	return nil
}

func (k *failoverKind) stopSource(ctx context.Context, r *jobs.Run, name string, md *machineData) error {
	m, err := k.e.Cat.Machine(ctx, name)
	if err != nil {
		return err
	}
	action := "stop"
	if m.Spec.Driver.Stop == "" {
		action, md.UsedPause = "pause", true
	}
	if !k.e.Agents.Connected(md.SourceAgent) {
		return unavailable("the source agent of %s is not connected", name)
	}
	if _, err := k.sourceDriver(ctx, name, md.SourceAgent, action); err != nil {
		return refuse("could not %s the source machine: %v", action, err)
	}
	r.Note("%s: source %s; no more writes", name, map[string]string{"stop": "stopped", "pause": "paused"}[action])
	return nil
}

func (k *failoverKind) finalCycle(ctx context.Context, r *jobs.Run, name string, md *machineData) error {
	if md.Point != 0 {
		return nil
	}
	var resp msg.CycleNowResponse
	if err := k.e.Agents.Call(ctx, md.SourceAgent, msg.MethodCycleNow, msg.CycleNowRequest{Machine: name}, &resp); err != nil {
		return refuse("the final cycle failed: %v", err)
	}
	md.Point = resp.PointID
	r.MachineNote(name, fmt.Sprintf("planned: final point %d holds every write (the source was stopped before it)", md.Point))
	r.SetMachine(name, "processed", md.Point, nil)
	return nil
}

func (k *failoverKind) powerOff(ctx context.Context, r *jobs.Run, name string, md *machineData) error {
	if !md.UsedPause {
		r.Note("%s: already powered off", name)
		return nil
	}
	r.Note("%s: the source has no stop command and stays paused", name)
	return nil
}

func (k *failoverKind) targetStatus(ctx context.Context, md *machineData, name string) (msg.TargetStatusResponse, error) {
	var st msg.TargetStatusResponse
	if !k.e.Agents.Connected(md.TargetAgent) {
		return st, unavailable("the target agent of %s is not connected", md.Target)
	}
	err := k.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: md.Dir, Machine: name}, &st)
	return st, err
}

func (k *failoverKind) clone(ctx context.Context, r *jobs.Run, name string, md *machineData) error {
	st, err := k.targetStatus(ctx, md, name)
	if err != nil {
		return err
	}
	if _, ok := st.Sets[md.Set]; ok {
		return nil
	}
	staged, ok := st.Sets["staged"]
	if !ok || staged.MovingTo != 0 || staged.Written {
		r.Note("%s: no usable staged replica; the test disks are written from the point", name)
		return nil
	}
	var resp msg.TargetCloneResponse
	if err := k.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetClone, msg.TargetCloneRequest{Dir: md.Dir, Machine: name, To: md.Set}, &resp); err != nil {
		return err
	}
	if resp.Reflinked {
		r.Note("%s: test disks are reflink clones of the staged replica (point %d)", name, staged.Point)
	} else {
		r.Note("%s: test disks copied from the staged replica (%d bytes; no reflink here)", name, resp.Bytes)
	}
	return nil
}

func (k *failoverKind) moveStep(ctx context.Context, r *jobs.Run, name string, md *machineData) error {
	// A staging move that began before this job held the machine ends
	// first; the status read next is then current.
	unlock := k.e.lockMoves(name)
	defer unlock()
	st, err := k.targetStatus(ctx, md, name)
	if err != nil {
		return err
	}
	set, from := md.Set, "staged"
	if k.kind == KindTest || k.kind == KindChangePoint {
		from = md.Set
	}
	if k.kind == KindFailover || k.kind == KindPlanned {
		if live, ok := st.Sets["live"]; ok {
			if live.Point == md.Point && live.MovingTo == 0 {
				return nil // moved and promoted before a restart
			}
			from = "live"
		}
	}
	cur, exists := st.Sets[from]
	mv := Move{AgentID: md.TargetAgent, Ref: msg.TargetRef{Dir: md.Dir, Machine: name, Set: from}, Machine: name,
		SetPoint: cur.Point, From: cur.Point, MovingTo: cur.MovingTo, To: md.Point, Create: !exists, JobID: r.ID(), Progress: r.Progress}
	// On a target of another format the machine ran on the format copies
	// (target.convert): the raw files still hold their point, and the move
	// (which deletes the copies) starts from it.
	t, _, err := k.e.Cat.Target(ctx, md.Target)
	if err != nil {
		return err
	}
	rawKept := cur.Written && t.Format != "" && t.Format != "raw"
	mv.Force = rawKept
	if cur.Written && !rawKept {
		mv.From = 0
	}
	if k.kind == KindChangePoint && md.Writes != 0 && !rawKept {
		mv.From = md.Writes // the set equals the point that kept its writes
	}
	start := time.Now()
	res, err := k.e.move(ctx, mv)
	if err != nil {
		return err
	}
	r.Note("%s: %d blocks (%d bytes) and %d zero blocks rewritten from point %d to %d in %s", name, res.Blocks, res.Bytes, res.ZeroBlocks, mv.From, md.Point, time.Since(start).Round(time.Millisecond))
	if from == "staged" && set == "live" {
		if err := k.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetPromote, msg.TargetRef{Dir: md.Dir, Machine: name, Set: "staged"}, &struct{}{}); err != nil {
			return err
		}
	}
	r.SetMachine(name, "moved", md.Point, nil)
	return nil
}

func (k *failoverKind) targetDriver(ctx context.Context, md *machineData, name string, action string, env map[string]string) (msg.DriverResponse, error) {
	t, _, err := k.e.Cat.Target(ctx, md.Target)
	if err != nil {
		return msg.DriverResponse{}, err
	}
	var resp msg.DriverResponse
	err = k.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetDriver, msg.TargetDriverRequest{
		Machine: md.DriverName, Action: action, Commands: msg.Driver(t.Exec), Env: env,
		Ref: &msg.TargetRef{Dir: md.Dir, Machine: name, Set: md.Set}}, &resp)
	return resp, err
}

// env is the driver's environment for the machine's set. For a start
// (starting) the disks are first written in the target's format when it is
// not raw; other actions name the copies a start made.
func (k *failoverKind) env(ctx context.Context, r *jobs.Run, md *machineData, name string, starting bool) (map[string]string, error) {
	m, err := k.e.Cat.Machine(ctx, name)
	if err != nil {
		return nil, err
	}
	t, _, err := k.e.Cat.Target(ctx, md.Target)
	if err != nil {
		return nil, err
	}
	st, err := k.targetStatus(ctx, md, name)
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, d := range st.Sets[md.Set].Disks {
		paths = append(paths, d.Path)
	}
	if t.Format != "" && t.Format != "raw" {
		if starting {
			if paths, err = k.convert(ctx, r, md, name, t.Format); err != nil {
				return nil, err
			}
		} else {
			for i, p := range paths {
				paths[i] = msg.FormatCopyPath(p, t.Format)
			}
		}
	}
	env := driverEnv(r.ID(), r.Kind(), m, t, md.Point, paths, k.kind == KindTest, md.Set)
	env["FERRY_MACHINE"] = md.DriverName
	return env, nil
}

// convert has the target agent write the set's disks in the format the
// target's hypervisor wants, and returns their paths. The agent keeps a
// copy it made before (the machine may run on it), so a start retried
// after a restart converts nothing again.
func (k *failoverKind) convert(ctx context.Context, r *jobs.Run, md *machineData, name, format string) ([]string, error) {
	start := time.Now()
	var resp msg.TargetConvertResponse
	err := k.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetConvert, msg.TargetConvertRequest{
		Ref: msg.TargetRef{Dir: md.Dir, Machine: name, Set: md.Set}, Format: format}, &resp)
	if err != nil {
		return nil, fmt.Errorf("writing %s's disks as %s: %w", name, format, err)
	}
	if resp.Bytes > 0 {
		r.Note("%s: disks written as %s (%d bytes of data) in %s", name, format, resp.Bytes, time.Since(start).Round(time.Millisecond))
	}
	return resp.Paths, nil
}

func (k *failoverKind) start(ctx context.Context, r *jobs.Run, name string, md *machineData) error {
	env, err := k.env(ctx, r, md, name, true)
	if err != nil {
		return err
	}
	t, _, err := k.e.Cat.Target(ctx, md.Target)
	if err != nil {
		return err
	}
	running := func() (bool, error) {
		if t.Exec.Status == "" {
			return false, nil
		}
		resp, err := k.targetDriver(ctx, md, name, "status", env)
		return err == nil && resp.Status == "running", err
	}
	if ok, _ := running(); !ok {
		md.Started = true
		if _, err := k.targetDriver(ctx, md, name, "start", env); err != nil {
			return refuse("the target driver could not start %s: %v", md.DriverName, err)
		}
		if t.Exec.Status != "" {
			deadline := time.Now().Add(5 * time.Minute)
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
				case <-time.After(500 * time.Millisecond):
				}
			}
		} else {
			r.Note("%s: the target driver has no status command; started when start returned", name)
		}
	}
	m, err := k.e.Cat.Machine(ctx, name)
	if err != nil {
		return err
	}
	switch k.kind {
	case KindTest:
		m.State = catalog.StateTestFailedOver
	default:
		m.State, m.ActiveSite = catalog.StateFailedOver, "target"
	}
	m.Failover = &api.FailoverInfo{Job: r.ID(), Target: md.Target, PointID: md.Point, Set: md.Set}
	if k.kind == KindTest {
		m.Failover.TestName = md.DriverName
	}
	if err := k.e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	r.SetMachine(name, "running", md.Point, nil)
	return nil
}

// stopTarget stops the machine at the target and waits for it to stop.
func (k *failoverKind) stopTarget(ctx context.Context, r *jobs.Run, name string, md *machineData) error {
	if k.kind == KindCleanup {
		m, err := k.e.Cat.Machine(ctx, name)
		if err != nil {
			return err
		}
		if m.State != catalog.StateTestFailedOver || m.Failover == nil {
			return refuse("machine %s has no test failover to clean up (it is %s)", name, m.State)
		}
		t, agentID, err := k.e.Cat.Target(ctx, m.Failover.Target)
		if err != nil {
			return err
		}
		md.Target, md.TargetAgent, md.Dir, md.Set, md.DriverName, md.Point = t.Name, agentID, t.Dir, m.Failover.Set, m.Failover.TestName, m.Failover.PointID
	}
	if !k.e.Agents.Connected(md.TargetAgent) {
		return unavailable("the target agent of %s is not connected", md.Target)
	}
	env, err := k.env(ctx, r, md, name, false)
	if err != nil {
		return err
	}
	t, _, _ := k.e.Cat.Target(ctx, md.Target)
	if t.Exec.Status != "" {
		if resp, err := k.targetDriver(ctx, md, name, "status", env); err == nil && resp.Status != "running" {
			return nil
		}
	}
	if _, err := k.targetDriver(ctx, md, name, "stop", env); err != nil {
		return refuse("could not stop %s at the target: %v", md.DriverName, err)
	}
	return nil
}

func (k *failoverKind) removeTest(ctx context.Context, r *jobs.Run, name string, md *machineData) error {
	if err := k.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetRemove, msg.TargetRef{Dir: md.Dir, Machine: name, Set: md.Set}, &struct{}{}); err != nil && !errors.Is(err, protocol.ErrNotFound) {
		return err
	}
	m, err := k.e.Cat.Machine(ctx, name)
	if err != nil {
		return err
	}
	m.State, m.Failover = catalog.StateProtected, nil
	return k.e.Cat.UpdateMachine(ctx, m)
}

// keepWrites ships the target's disks as a named point before they move.
func (k *failoverKind) keepWrites(ctx context.Context, r *jobs.Run, name string, md *machineData) error {
	if md.Writes != 0 {
		return nil
	}
	var resp msg.TargetShipResponse
	err := k.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetShip, msg.TargetShipRequest{
		Ref: msg.TargetRef{Dir: md.Dir, Machine: name, Set: md.Set}, Name: "target-writes-" + r.ID()}, &resp)
	if err != nil {
		return err
	}
	md.Writes = resp.PointID
	r.MachineNote(name, fmt.Sprintf("the writes made at the target were kept as point %d (target-writes-%s)", resp.PointID, r.ID()))
	return nil
}

func (k *failoverKind) commit(ctx context.Context, r *jobs.Run, name string) error {
	if err := k.e.Repo.DeleteMachine(ctx, name); err != nil {
		return err
	}
	m, err := k.e.Cat.Machine(ctx, name)
	if err != nil {
		return err
	}
	m.State = catalog.StateCommitted
	if err := k.e.Cat.UpdateMachine(ctx, m); err != nil {
		return err
	}
	r.SetMachine(name, "committed", 0, nil)
	return nil
}

// Rollback undoes a cancelled failover: the target machine is stopped and
// removed, the staged disks return to the point they held.
func (k *failoverKind) Rollback(ctx context.Context, r *jobs.Run) error {
	var spec Spec
	var d jobData
	if err := r.Spec(&spec); err != nil {
		return err
	}
	if err := r.Data(&d); err != nil {
		return err
	}
	var errs []error
	for _, name := range spec.Machines {
		md := d.M[name]
		if md == nil || md.TargetAgent == "" {
			continue
		}
		switch k.kind {
		case KindFailover, KindPlanned, KindTest:
		default:
			continue // commit, cleanup and change-point have nothing to undo at a boundary
		}
		if md.Started {
			if env, err := k.env(ctx, r, md, name, false); err == nil {
				k.targetDriver(ctx, md, name, "stop", env)
			}
		}
		if k.kind == KindTest {
			err := k.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetRemove, msg.TargetRef{Dir: md.Dir, Machine: name, Set: md.Set}, &struct{}{})
			if err != nil && !errors.Is(err, protocol.ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		st, err := k.targetStatus(ctx, md, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, ok := st.Sets["live"]; ok {
			if err := k.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetDemote, msg.TargetRef{Dir: md.Dir, Machine: name, Set: "live"}, &struct{}{}); err != nil {
				errs = append(errs, err)
				continue
			}
			st, _ = k.targetStatus(ctx, md, name)
		}
		staged, ok := st.Sets["staged"]
		if !ok {
			continue
		}
		if !md.StagedExisted {
			if err := k.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetRemove, msg.TargetRef{Dir: md.Dir, Machine: name, Set: "staged"}, &struct{}{}); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if staged.Point == md.StagedFrom && staged.MovingTo == 0 && !staged.Written {
			continue
		}
		mv := Move{AgentID: md.TargetAgent, Ref: msg.TargetRef{Dir: md.Dir, Machine: name, Set: "staged"}, Machine: name,
			SetPoint: staged.Point, From: staged.Point, MovingTo: staged.MovingTo, To: md.StagedFrom, JobID: r.ID()}
		if staged.Written {
			mv.From = 0
		}
		if _, err := k.e.move(ctx, mv); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Finish puts machines back to replicating after a failover that did not
// complete, and forgets the job's key.
func (k *failoverKind) Finish(ctx context.Context, r *jobs.Run, state string) {
	defer k.e.DropKey(r.ID())
	if state == api.JobSucceeded {
		return
	}
	var spec Spec
	var d jobData
	r.Spec(&spec)
	r.Data(&d)
	for _, name := range spec.Machines {
		md := d.M[name]
		if md == nil {
			md = &machineData{}
		}
		if state == api.JobPartial && !md.Failed {
			continue
		}
		switch k.kind {
		case KindFailover, KindPlanned, KindTest:
		default:
			continue
		}
		m, err := k.e.Cat.Machine(ctx, name)
		if err != nil || m.Failover == nil || m.Failover.Job != r.ID() {
			continue
		}
		// A machine the job started at the target (its status never said
		// running, or a later step failed) is stopped first: the source may
		// run again, and a test's disks are about to go.
		targetStopped := true
		if md.Started && md.TargetAgent != "" {
			if err := k.stopTarget(ctx, r, name, md); err != nil {
				targetStopped = false
				r.Note("%s: stopping the machine started at the target failed: %v", name, err)
			} else {
				r.Note("%s: the machine started at the target was stopped", name)
			}
		}
		if k.kind == KindPlanned && md.SourceAgent != "" && !targetStopped {
			// Never two running copies: the admin decides.
			r.Note("%s: the source is not restarted, since the machine at the target may be running; stop it there, then start the source", name)
		} else if k.kind == KindPlanned && md.SourceAgent != "" {
			// A planned failover that failed restarts the source.
			action := "start"
			if md.UsedPause {
				action = "resume"
			}
			if _, err := k.sourceDriver(ctx, name, md.SourceAgent, action); err != nil {
				r.Note("%s: restarting the source failed: %v", name, err)
			} else {
				r.Note("%s: the source was restarted", name)
			}
		}
		if k.kind == KindTest && md.TargetAgent != "" {
			k.e.Agents.Call(ctx, md.TargetAgent, msg.MethodTargetRemove, msg.TargetRef{Dir: md.Dir, Machine: name, Set: md.Set}, &struct{}{})
		}
		m.Failover = nil
		if m.State == catalog.StateProtected || m.State == catalog.StateTestFailedOver {
			m.State = catalog.StateProtected
		}
		m.Resync = k.kind != KindTest // replication restarts with a hash resync
		if err := k.e.Cat.UpdateMachine(ctx, m); err != nil {
			r.Note("%s: %v", name, err)
			continue
		}
		if err := k.e.Push(ctx, m.AgentID); err != nil {
			r.Note("%s: replication resumes when the source agent reconnects (%v)", name, err)
		}
	}
}
