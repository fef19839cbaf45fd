package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/controller/lifecycle"
	"github.com/ferrydr/ferry/controller/points"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

// Protect starts protecting a machine. The source agent must be connected:
// it checks that it can read every disk before anything is stored.
func (s *Server) Protect(ctx context.Context, req api.ProtectRequest) (api.Machine, error) {
	if err := validName("machine", req.Machine); err != nil {
		return api.Machine{}, err
	}
	if len(req.Disks) == 0 {
		return api.Machine{}, api.Errorf(api.CodeInvalid, "a machine needs at least one disk")
	}
	seen := map[string]bool{}
	for _, d := range req.Disks {
		if err := validName("disk", d.Name); err != nil {
			return api.Machine{}, err
		}
		if seen[d.Name] {
			return api.Machine{}, api.Errorf(api.CodeInvalid, "two disks are named %q", d.Name)
		}
		seen[d.Name] = true
	}
	if _, err := s.cat.Machine(ctx, req.Machine); err == nil {
		return api.Machine{}, api.Errorf(api.CodeConflict, "machine %s is already protected", req.Machine)
	}
	if err := checkProtectHardware(&req); err != nil {
		return api.Machine{}, err
	}
	a, err := s.cat.Agent(ctx, req.Agent)
	if err != nil {
		return api.Machine{}, apiErr(err)
	}
	if a.Revoked {
		return api.Machine{}, api.Errorf(api.CodeFailedPrecondition, "agent %s is revoked", a.Name)
	}
	if req.Driver != (api.Driver{}) {
		if err := s.refusedByAgent(a.ID, a.Name, allowExecDrivers); err != nil {
			return api.Machine{}, err
		}
	}
	if err := s.refuseProtectedDisks(ctx, a, req, ""); err != nil {
		return api.Machine{}, err
	}
	if req.Policy == "" {
		req.Policy = catalog.DefaultPolicyName
	}
	pol, err := s.cat.Policy(ctx, req.Policy)
	if err != nil {
		return api.Machine{}, apiErr(err)
	}
	req.BlockSize = pol.BlockSize
	req.Agent = a.Name
	if req.Target != "" {
		if err := s.refuseOccupiedTarget(ctx, req.Target, req.Machine); err != nil {
			return api.Machine{}, err
		}
		t, _, err := s.cat.Target(ctx, req.Target)
		if err != nil {
			return api.Machine{}, apiErr(err)
		}
		if err := checkMachineNetworks(catalog.Machine{Name: req.Machine, Spec: req}, t); err != nil {
			return api.Machine{}, err
		}
	}

	// The agent checks every path before anything is stored.
	paths := make([]string, len(req.Disks))
	for i, d := range req.Disks {
		paths[i] = d.Path
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var check msg.CheckResponse
	if err := s.agents.call(cctx, a.ID, a.Name, msg.MethodCheck, msg.CheckRequest{Paths: paths}, &check); err != nil {
		return api.Machine{}, apiErr(err)
	}
	var bad []string
	for i, d := range check.Disks {
		if d.Error != "" {
			bad = append(bad, fmt.Sprintf("disk %s (%s): %s", req.Disks[i].Name, d.Path, d.Error))
		}
	}
	if len(bad) > 0 || len(check.Disks) != len(req.Disks) {
		return api.Machine{}, api.Errorf(api.CodeInvalid, "agent %s cannot protect %s: %s", a.Name, req.Machine, strings.Join(bad, "; "))
	}
	// The format found now is recorded and forced from then on: a raw
	// disk's guest may later write a container header at its first byte.
	for i := range req.Disks {
		req.Disks[i].Format = check.Disks[i].Format
	}
	if err := s.validateSourceDriver(cctx, a.ID, a.Name, req); err != nil {
		return api.Machine{}, err
	}
	m := catalog.Machine{Name: req.Machine, AgentID: a.ID, Policy: req.Policy, Target: req.Target,
		State: catalog.StateSyncing, ActiveSite: catalog.SiteHome, Direction: catalog.Forward, Spec: req}
	if err := s.cat.AddMachine(ctx, m); err != nil {
		return api.Machine{}, apiErr(err)
	}
	s.log.Info("machine protected", "machine", req.Machine, "agent", a.Name, "disks", len(req.Disks))
	if err := s.pushConfig(ctx, a.ID); err != nil {
		s.log.Warn("config push failed", "agent", a.Name, "err", err)
	}
	return s.Machine(ctx, req.Machine)
}

// refuseProtectedDisks refuses a disk path that another machine already
// protects on the same agent: two machines replicating one disk would
// each fail over onto it. Paths are compared as given (cleaned); two
// names of one device (a symlink, /dev/disk/by-id) are not recognised.
// The machine named self (one being updated) is left out.
func (s *Server) refuseProtectedDisks(ctx context.Context, a catalog.Agent, req api.ProtectRequest, self string) error {
	ms, err := s.cat.Machines(ctx, a.ID)
	if err != nil {
		return err
	}
	for _, d := range req.Disks {
		for _, m := range ms {
			if m.Name == self {
				continue
			}
			for _, od := range m.Spec.Disks {
				if cleanPath(od.Path) == cleanPath(d.Path) {
					return api.Errorf(api.CodeConflict, "disk %s (%s) on agent %s is already protected by machine %s (its disk %s): a disk can be protected by one machine only; unprotect %s first",
						d.Name, d.Path, a.Name, m.Name, od.Name, m.Name)
				}
			}
		}
	}
	return nil
}

func cleanPath(p string) string { return filepath.Clean(p) }

// refuseOccupiedTarget refuses to protect a machine under a name whose
// directory at the target already holds live disks — another machine's,
// for example one whose failover was committed and that still runs there
// after its name was unprotected: a failover would overwrite them. A
// target whose agent is away cannot be checked now; the failover checks
// again before it moves any disk.
func (s *Server) refuseOccupiedTarget(ctx context.Context, target, machine string) error {
	t, agentID, err := s.cat.Target(ctx, target)
	if err != nil {
		return apiErr(err)
	}
	if _, ok := s.agents.get(agentID); !ok {
		return nil
	}
	var st msg.TargetStatusResponse
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.agents.call(cctx, agentID, t.Name, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: t.Dir, Machine: machine}, &st); err != nil {
		return apiErr(err)
	}
	if live, ok := st.Sets["live"]; ok {
		return api.Errorf(api.CodeConflict, "target %s already holds live disks of a machine named %s (%s/%s/live, point %d): a failover of a new %s would overwrite them; protect it under another name or with another target, or remove that machine's disks first",
			t.Name, machine, t.Dir, machine, live.Point, machine)
	}
	return nil
}

// Unprotect stops protection; points stay unless deletePoints.
func (s *Server) Unprotect(ctx context.Context, machine string, deletePoints bool) error {
	m, err := s.cat.Machine(ctx, machine)
	if err != nil {
		return apiErr(err)
	}
	job, err := s.cat.MachineJob(ctx, machine)
	if err != nil {
		return err
	}
	if job != "" {
		return api.Errorf(api.CodeBusy, "%v", s.cat.Busy(ctx, machine, job))
	}
	if err := lifecycle.Check(machine, m.State, lifecycle.Unprotect); err != nil {
		return apiErr(err)
	}
	// Under the plan lock: no plan gains the machine between the check
	// and the delete.
	s.planMu.Lock()
	err = s.refuseInPlans(ctx, machine)
	if err == nil {
		err = s.cat.DeleteMachine(ctx, machine)
	}
	s.planMu.Unlock()
	if err != nil {
		return apiErr(err)
	}
	s.ing.ForgetMachine(machine)
	s.replMu.Lock()
	delete(s.repl, machine)
	delete(s.progress, machine)
	s.replMu.Unlock()
	if err := s.pushConfig(ctx, m.AgentID); err != nil {
		s.log.Warn("config push failed", "agent", m.AgentID, "err", err)
	}
	if m.RoundTrip != nil {
		// The recovery agent may be reading it as a source (reverse).
		if _, rec, err := s.cat.Target(ctx, m.RoundTrip.Target); err == nil {
			if err := s.pushConfig(ctx, rec); err != nil {
				s.log.Warn("config push failed", "agent", rec, "err", err)
			}
		}
	}
	// A committed failover kept the points a re-protect would need
	// (commitPoints); unprotect releases them.
	if deletePoints || m.State == catalog.StateCommitted {
		if err := s.repo.DeleteMachine(ctx, machine); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		if err := s.cat.DeletePointNotes(ctx, machine); err != nil {
			s.log.Warn("the deleted points' notes were not removed", "machine", machine, "err", err)
		}
	}
	s.log.Info("machine unprotected", "machine", machine, "points_deleted", deletePoints)
	return nil
}

// Machines lists machines with their health.
func (s *Server) Machines(ctx context.Context) ([]api.Machine, error) {
	ms, err := s.cat.Machines(ctx, "")
	if err != nil {
		return nil, err
	}
	out := []api.Machine{}
	for _, m := range ms {
		if m, err = s.settled(ctx, m); err != nil {
			return nil, err
		}
		am, err := s.describe(ctx, m)
		if err != nil {
			return nil, err
		}
		out = append(out, am)
	}
	return out, nil
}

// Machine shows one machine.
func (s *Server) Machine(ctx context.Context, name string) (api.Machine, error) {
	m, err := s.machine(ctx, name)
	if err != nil {
		return api.Machine{}, apiErr(err)
	}
	return s.describe(ctx, m)
}

func (s *Server) describe(ctx context.Context, m catalog.Machine) (api.Machine, error) {
	a, _ := s.cat.Agent(ctx, m.AgentID)
	pol, err := s.cat.Policy(ctx, m.Policy)
	if err != nil {
		return api.Machine{}, err
	}
	pts, err := s.repo.Points(ctx, m.Name)
	if err != nil {
		return api.Machine{}, err
	}
	out := api.Machine{
		Name: m.Name, Agent: a.Name, State: m.State, ActiveSite: m.ActiveSite, Direction: m.Direction,
		Policy: m.Policy, Target: m.Target, AllowedActions: lifecycle.Allowed(m.State),
		CPUs: m.Spec.CPUs, Memory: m.Spec.Memory, NICs: m.Spec.NICs, Driver: m.Spec.Driver,
		PreSnapshot: m.Spec.PreSnapshot, PostSnapshot: m.Spec.PostSnapshot, Freeze: m.Spec.Freeze,
	}
	var sizes map[string]int64
	if len(pts) > 0 {
		last := pts[len(pts)-1]
		out.LastPoint = &last.Instant
		sizes = map[string]int64{}
		for _, d := range last.Disks {
			sizes[d.Name] = d.Size
		}
		notes, err := s.cat.PointNotes(ctx, m.Name)
		if err != nil {
			return api.Machine{}, err
		}
		out.LastPointMethod = notes[last.ID].Method
		if last.Consistency == storage.Inconsistent {
			out.LastPointReason = notes[last.ID].Reason
		}
	}
	for _, d := range m.Spec.Disks {
		out.Disks = append(out.Disks, api.MachineDisk{Name: d.Name, SourcePath: d.Path, SourceFormat: d.Format, Size: sizes[d.Name]})
	}
	out.Replication, out.Progress = s.replication(m.Name)
	if out.Job, err = s.cat.MachineJob(ctx, m.Name); err != nil {
		return api.Machine{}, err
	}
	if out.Job != "" {
		// While a job holds the machine it is followed, and cancelled only
		// while a cancel can still roll it back.
		out.AllowedActions = []string{"jobs watch " + out.Job}
		if s.jobs.Cancellable(ctx, out.Job) == nil {
			out.AllowedActions = append(out.AllowedActions, "cancel "+out.Job+" --force")
		}
	}
	out.Fence = failover.FenceInfo(m)
	if m.Failover != nil {
		t, agentID, err := s.cat.Target(ctx, m.Failover.Target)
		if err == nil {
			var st msg.TargetStatusResponse
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if s.agents.call(cctx, agentID, t.Name, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: t.Dir, Machine: m.Name}, &st) == nil {
				for i := range out.Disks {
					for _, d := range st.Sets[m.Failover.Set].Disks {
						if d.Name == out.Disks[i].Name {
							// The machine runs on the format copy when the
							// target wants one (docs/failover.md).
							out.Disks[i].TargetPath, out.Disks[i].Format = msg.FormatCopyPath(d.Path, t.Format), cmp.Or(t.Format, "raw")
						}
					}
				}
			}
			cancel()
		}
	}
	if out.Audit, err = s.machineAudit(ctx, m.Name, pts); err != nil {
		return api.Machine{}, err
	}
	conn, connected := s.agents.get(m.AgentID)
	var skew time.Duration
	if connected {
		skew = conn.clockOffset()
	}
	verified, err := s.cat.VerifiedPoints(ctx, m.Name)
	if err != nil {
		return api.Machine{}, err
	}
	if id := points.NewestVerified(pts, verified); id != 0 {
		for _, p := range pts {
			if p.ID == id {
				age := s.now().Sub(p.Instant).Seconds()
				out.VerifiedSeconds, out.VerifiedPoint = &age, id
			}
		}
	}
	drillFailure, err := s.drillFailure(ctx, m.Name)
	if err != nil {
		return api.Machine{}, err
	}
	out.RPOSeconds, out.Health, out.HealthReason = points.Health(points.HealthInput{
		Now: s.now(), LastPoint: out.LastPoint, Protected: m.Created, Threshold: pol.RPOThreshold.Std(),
		Connected: connected, ReplError: out.Replication.LastError, ClockSkew: skew,
		Replicating: replicationStopped(m) == "", NotReplicating: replicationStopped(m),
		DiskFull: s.disk.check(false) != nil, OverQuota: s.overQuota(pts),
		DamagedPoints: damagedPoints(pts), DamageDetail: damageDetail(out.Audit), DrillFailure: drillFailure,
	})
	if !connected {
		out.Reasons = append(out.Reasons, "source agent "+a.Name+" is not connected")
	}
	return out, nil
}

// Points lists a machine's recovery points.
func (s *Server) Points(ctx context.Context, machine string) ([]api.Point, error) {
	pts, err := s.repo.Points(ctx, machine)
	if err != nil {
		return nil, err
	}
	if len(pts) == 0 {
		if _, err := s.cat.Machine(ctx, machine); errors.Is(err, catalog.ErrNotFound) {
			return nil, api.Errorf(api.CodeNotFound, "machine %s has no points and is not protected", machine)
		}
	}
	verified, err := s.cat.VerifiedPoints(ctx, machine)
	if err != nil {
		return nil, err
	}
	notes, err := s.cat.PointNotes(ctx, machine)
	if err != nil {
		return nil, err
	}
	out := []api.Point{}
	for _, p := range pts {
		ap := apiPoint(p)
		ap.Verified = verified[p.ID]
		ap.Method, ap.Reason = notes[p.ID].Method, notes[p.ID].Reason
		out = append(out, ap)
	}
	return out, nil
}

// drillFailure says why the machine's newest finished drill run failed
// ("" when it passed, or none ran; a cancelled run says nothing).
func (s *Server) drillFailure(ctx context.Context, machine string) (string, error) {
	runs, err := s.cat.MachineDrillRuns(ctx, machine, 5)
	if err != nil {
		return "", err
	}
	for _, r := range runs {
		switch r.Result {
		case api.DrillPassed:
			return "", nil
		case api.DrillFailed:
			if len(r.Phases) == 0 {
				continue // a scheduled run the machine's state refused proves nothing either way
			}
			return fmt.Sprintf("drill %s failed on point %d: %s", r.Drill, r.Point, r.Error), nil
		}
	}
	return "", nil
}

func apiPoint(p storage.Point) api.Point {
	return api.Point{ID: p.ID, Time: p.Instant, Consistency: string(p.Consistency), Bytes: p.Bytes, Name: p.Name, Changed: p.Changed, Damaged: p.Damaged}
}

// resolve finds a point by spec, as an API error when it cannot.
func (s *Server) resolve(ctx context.Context, machine, spec string) (storage.Point, error) {
	p, err := points.Resolve(ctx, s.repo, s.cat, machine, spec)
	return p, apiErr(err)
}

// LabelPoint names a point.
func (s *Server) LabelPoint(ctx context.Context, machine string, req api.LabelRequest) (api.Point, error) {
	if req.Point == "" {
		return api.Point{}, api.Errorf(api.CodeInvalid, "--point is required")
	}
	p, err := s.resolve(ctx, machine, req.Point)
	if err != nil {
		return api.Point{}, err
	}
	if err := s.repo.LabelPoint(ctx, p.ID, req.Name); err != nil {
		return api.Point{}, err
	}
	p.Name = req.Name
	return apiPoint(p), nil
}

// reader returns the repository to read plaintext from: with the given
// private key for an encrypted repository.
func (s *Server) reader(key []byte) (*storage.Repo, error) {
	if !s.repo.Encrypted() {
		return s.repo, nil
	}
	if len(key) == 0 {
		return nil, api.Errorf(api.CodeFailedPrecondition, "the repository is encrypted: give its private key with --key-file")
	}
	k, err := storage.ParsePrivateKeyPEM(key)
	if err != nil {
		return nil, api.Errorf(api.CodeInvalid, "--key-file: %v", err)
	}
	r, err := s.repo.WithPrivateKey(k)
	if errors.Is(err, storage.ErrWrongKey) {
		return nil, api.Errorf(api.CodeInvalid, "--key-file: %v", err)
	}
	return r, err
}

// ExportManifest resolves the point to export and checks the key.
func (s *Server) ExportManifest(ctx context.Context, machine, spec string, key []byte) (api.ExportManifest, error) {
	// A machine still in the catalog exports what the lifecycle table
	// allows; the points of an unprotected one stay exportable.
	m, err := s.machine(ctx, machine)
	switch {
	case err == nil:
		if err := lifecycle.Check(machine, m.State, lifecycle.Export); err != nil {
			return api.ExportManifest{}, apiErr(err)
		}
	case !errors.Is(err, catalog.ErrNotFound):
		return api.ExportManifest{}, err
	}
	if _, err := s.reader(key); err != nil {
		return api.ExportManifest{}, err
	}
	p, err := s.resolve(ctx, machine, spec)
	if err != nil {
		return api.ExportManifest{}, err
	}
	out := api.ExportManifest{Point: apiPoint(p)}
	for _, d := range p.Disks {
		out.Disks = append(out.Disks, api.ExportDisk{Name: d.Name, Size: d.Size})
	}
	return out, nil
}
