package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/controller/lifecycle"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

// UpdateMachine changes a protected machine's settings without a full
// resync of its unchanged disks (`ferry machines update`): the agent gets
// the new configuration, keeps the block maps of the disks it still has
// and syncs an added disk alone. What the change costs is said in Notes.
func (s *Server) UpdateMachine(ctx context.Context, name string, req api.UpdateMachineRequest) (api.UpdateMachineResult, error) {
	m, err := s.cat.Machine(ctx, name)
	if err != nil {
		return api.UpdateMachineResult{}, apiErr(err)
	}
	job, err := s.cat.MachineJob(ctx, name)
	if err != nil {
		return api.UpdateMachineResult{}, err
	}
	if job != "" {
		return api.UpdateMachineResult{}, api.Errorf(api.CodeBusy, "machine %s is busy with job %s: it cannot change while a job moves it; wait for the job (ferry jobs watch %s)", name, job, job)
	}
	if err := lifecycle.CheckUpdate(name, m.State); err != nil {
		return api.UpdateMachineResult{}, apiErr(err)
	}
	a, err := s.cat.Agent(ctx, m.AgentID)
	if err != nil {
		return api.UpdateMachineResult{}, apiErr(err)
	}
	u := machineUpdate{s: s, m: m, agent: a, spec: cloneSpec(m.Spec)}
	// The record's policy and target are the truth (the spec keeps what
	// protect was asked).
	u.spec.Policy, u.spec.Target = m.Policy, m.Target
	steps := []func(context.Context, api.UpdateMachineRequest) error{
		u.rename, u.policy, u.target, u.driver, u.hooks, u.removeDisks, u.addDisks,
	}
	for _, step := range steps {
		if err := step(ctx, req); err != nil {
			return api.UpdateMachineResult{}, err
		}
	}
	if len(u.spec.Disks) == 0 {
		return api.UpdateMachineResult{}, api.Errorf(api.CodeInvalid, "machine %s would have no disk left: a machine needs at least one disk (unprotect it instead)", name)
	}
	if !u.changed() {
		return api.UpdateMachineResult{}, api.Errorf(api.CodeInvalid, "nothing to change: give at least one setting (ferry machines update --help)")
	}
	if err := u.apply(ctx); err != nil {
		return api.UpdateMachineResult{}, err
	}
	out, err := s.Machine(ctx, u.finalName())
	if err != nil {
		return api.UpdateMachineResult{}, err
	}
	if len(u.notes) == 0 {
		u.notes = []string{"no data is sent for this change: the next cycles continue from the newest point"}
	}
	return api.UpdateMachineResult{Machine: out, Notes: u.notes}, nil
}

// machineUpdate is one `machines update` being checked and applied: m is
// the machine as stored, spec the new protect request.
type machineUpdate struct {
	s     *Server
	m     catalog.Machine
	agent catalog.Agent
	spec  api.ProtectRequest
	// newName is the machine's name after a rename ("" for none);
	// dropPending: the rename drops the initial sync's partial point.
	newName     string
	dropPending bool
	// blockSize is the new block size of every disk (0: unchanged); it
	// deletes the machine's stored points (allowed by Force).
	blockSize     int
	targetChanged bool
	added         []api.DiskRef
	notes         []string
}

func cloneSpec(p api.ProtectRequest) api.ProtectRequest {
	p.Disks = slices.Clone(p.Disks)
	p.Freeze = slices.Clone(p.Freeze)
	p.SourceOptions = maps.Clone(p.SourceOptions)
	return p
}

func (u *machineUpdate) changed() bool {
	was := u.m.Spec
	was.Policy, was.Target = u.m.Policy, u.m.Target
	return u.newName != "" || !specEqual(was, u.spec)
}

func specEqual(a, b api.ProtectRequest) bool {
	return a.Driver == b.Driver && a.PreSnapshot == b.PreSnapshot && a.PostSnapshot == b.PostSnapshot &&
		slices.Equal(a.Freeze, b.Freeze) && a.SourceDriver == b.SourceDriver && maps.Equal(a.SourceOptions, b.SourceOptions) &&
		a.Domain == b.Domain && slices.Equal(a.Disks, b.Disks) && a.BlockSize == b.BlockSize && a.Policy == b.Policy &&
		a.Target == b.Target
}

// rename is allowed only while the machine runs at home, replicates
// forward and no job holds it (checked before), and, in this version, has
// no recovery point yet: the repository keeps points under the machine's
// name in its packs, and renaming them is a storage record this version
// does not have.
func (u *machineUpdate) rename(ctx context.Context, req api.UpdateMachineRequest) error {
	if req.Rename == "" || req.Rename == u.m.Name {
		return nil
	}
	name := u.m.Name
	if err := validName("machine", req.Rename); err != nil {
		return err
	}
	if u.m.AtRecovery() || u.m.Reversed() {
		return api.Errorf(api.CodeFailedPrecondition, "machine %s cannot be renamed: it is active at its %s site (direction %s); a machine is renamed only while it runs at home and replicates forward", name, u.m.ActiveSite, u.m.Direction)
	}
	if _, err := u.s.cat.Machine(ctx, req.Rename); err == nil {
		return api.Errorf(api.CodeConflict, "machine %s cannot be renamed to %s: a machine of that name is protected already", name, req.Rename)
	}
	if pts, err := u.s.repo.Points(ctx, req.Rename); err != nil {
		return err
	} else if len(pts) > 0 {
		return api.Errorf(api.CodeConflict, "machine %s cannot be renamed to %s: the repository keeps %d point(s) of a former machine %s (ferry points list %s)", name, req.Rename, len(pts), req.Rename, req.Rename)
	}
	pts, err := u.s.repo.Points(ctx, name)
	if err != nil {
		return err
	}
	if len(pts) > 0 {
		return api.Errorf(api.CodeFailedPrecondition, "machine %s cannot be renamed: it has %d recovery point(s) stored under its name (newest %d), and this version cannot rename stored points; a machine is renamed during its initial sync only. Instead: protect it under the new name (a new initial sync) and unprotect %s once the new one has a point",
			name, len(pts), pts[len(pts)-1].ID, name)
	}
	u.newName, u.dropPending = req.Rename, true
	u.notes = append(u.notes, fmt.Sprintf("renamed %s to %s: the initial sync starts again under the new name", name, req.Rename))
	return nil
}

// policy changes the schedule, retention and bandwidth at once. A policy
// of another block size stores the disks in new blocks: the repository
// keeps a disk in one block size, so its points go (--force) and every
// disk is sent again.
func (u *machineUpdate) policy(ctx context.Context, req api.UpdateMachineRequest) error {
	if req.Policy == nil || *req.Policy == u.m.Policy {
		return nil
	}
	pol, err := u.s.cat.Policy(ctx, *req.Policy)
	if err != nil {
		return apiErr(err)
	}
	old := u.spec.BlockSize
	if old == 0 {
		if op, err := u.s.cat.Policy(ctx, u.m.Policy); err == nil {
			old = op.BlockSize
		}
	}
	u.spec.Policy = pol.Name
	if pol.BlockSize == old {
		u.notes = append(u.notes, fmt.Sprintf("policy %s: a point every %s, kept %s; no data is sent for this change", pol.Name, pol.RPEvery.Std(), retentionWords(pol.Retention.Std())))
		return nil
	}
	pts, err := u.s.repo.Points(ctx, u.m.Name)
	if err != nil {
		return err
	}
	if len(pts) > 0 && !req.Force {
		return api.Errorf(api.CodeFailedPrecondition, "policy %s stores blocks of %s, machine %s's disks are stored in blocks of %s: the repository keeps a disk in one block size, so the change deletes its %d recovery point(s) (%s) and resyncs every disk in full; add --force to do that",
			pol.Name, api.FormatSize(int64(pol.BlockSize)), u.m.Name, api.FormatSize(int64(old)), len(pts), pointIDs(pts))
	}
	u.spec.BlockSize, u.blockSize = pol.BlockSize, pol.BlockSize
	u.notes = append(u.notes, fmt.Sprintf("block size %s → %s: every disk is resynced in full (a new initial sync); %d recovery point(s) deleted",
		api.FormatSize(int64(old)), api.FormatSize(int64(pol.BlockSize)), len(pts)))
	return nil
}

func retentionWords(d time.Duration) string {
	if d == 0 {
		return "forever"
	}
	return "for " + d.String()
}

func pointIDs(pts []storage.Point) string {
	ids := make([]string, len(pts))
	for i, p := range pts {
		ids[i] = fmt.Sprint(p.ID)
	}
	return "ids " + strings.Join(ids, ", ")
}

// target changes the default failover target: the new one holds no
// staged copy yet, so the stager copies the newest point there in full.
func (u *machineUpdate) target(ctx context.Context, req api.UpdateMachineRequest) error {
	if req.Target == nil || *req.Target == u.m.Target {
		return nil
	}
	u.spec.Target, u.targetChanged = *req.Target, true
	if *req.Target == "" {
		u.notes = append(u.notes, "no default target: failover needs --target; nothing is staged any more")
		return nil
	}
	if err := u.s.refuseOccupiedTarget(ctx, *req.Target, u.finalName()); err != nil {
		return err
	}
	t, _, err := u.s.cat.Target(ctx, *req.Target)
	if err != nil {
		return apiErr(err)
	}
	if err := checkMachineNetworks(catalog.Machine{Name: u.m.Name, Spec: u.spec}, t); err != nil {
		return err
	}
	u.notes = append(u.notes, fmt.Sprintf("target %s: the newest point is staged there in full (it holds no copy of %s yet); replication from home continues unchanged", t.Name, u.m.Name))
	return nil
}

func (u *machineUpdate) finalName() string {
	if u.newName != "" {
		return u.newName
	}
	return u.m.Name
}

// driver replaces the source driver's commands and options one by one.
func (u *machineUpdate) driver(ctx context.Context, req api.UpdateMachineRequest) error {
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	d := &u.spec.Driver
	set(&d.Start, req.Start)
	set(&d.Stop, req.Stop)
	set(&d.Pause, req.Pause)
	set(&d.Resume, req.Resume)
	set(&d.Status, req.Status)
	set(&u.spec.Domain, req.Domain)
	if req.SourceDriver != nil {
		u.spec.SourceDriver = strings.TrimPrefix(*req.SourceDriver, "exec")
	}
	for k, v := range req.SourceOptions {
		if u.spec.SourceOptions == nil {
			u.spec.SourceOptions = map[string]string{}
		}
		if v == "" {
			delete(u.spec.SourceOptions, k)
		} else {
			u.spec.SourceOptions[k] = v
		}
	}
	if (d.Pause == "") != (d.Resume == "") {
		return api.Errorf(api.CodeInvalid, "--pause and --resume go together (machine %s would have only one)", u.m.Name)
	}
	if u.spec.SourceDriver != u.m.Spec.SourceDriver || !maps.Equal(u.spec.SourceOptions, u.m.Spec.SourceOptions) {
		if err := checkSourceDriver(u.spec.SourceDriver, u.spec.SourceOptions); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := u.s.validateSourceDriver(cctx, u.agent.ID, u.agent.Name, u.spec); err != nil {
			return err
		}
	}
	return nil
}

func (u *machineUpdate) hooks(_ context.Context, req api.UpdateMachineRequest) error {
	if req.PreSnapshot != nil {
		u.spec.PreSnapshot = *req.PreSnapshot
	}
	if req.PostSnapshot != nil {
		u.spec.PostSnapshot = *req.PostSnapshot
	}
	if req.Freeze != nil {
		u.spec.Freeze = slices.Clone(*req.Freeze)
		if len(u.spec.Freeze) == 0 {
			u.spec.Freeze = nil // as protect stores none
		}
	}
	return nil
}

func (u *machineUpdate) removeDisks(_ context.Context, req api.UpdateMachineRequest) error {
	for _, name := range req.RemoveDisks {
		i := slices.IndexFunc(u.spec.Disks, func(d api.DiskRef) bool { return d.Name == name })
		if i < 0 {
			return api.Errorf(api.CodeNotFound, "machine %s has no disk %s (its disks: %s)", u.m.Name, name, diskNames(u.m.Spec.Disks))
		}
		u.notes = append(u.notes, fmt.Sprintf("disk %s (%s) is no longer replicated: new points leave it out; the points made so far keep it", name, u.spec.Disks[i].Path))
		u.spec.Disks = slices.Delete(u.spec.Disks, i, i+1)
	}
	return nil
}

func diskNames(ds []api.DiskRef) string {
	names := make([]string, len(ds))
	for i, d := range ds {
		names[i] = d.Name
	}
	return strings.Join(names, ", ")
}

// addDisks checks the new disks as protect does (one machine per disk;
// the agent can read each) and records the format found.
func (u *machineUpdate) addDisks(ctx context.Context, req api.UpdateMachineRequest) error {
	if len(req.AddDisks) == 0 {
		return nil
	}
	for _, d := range req.AddDisks {
		if err := validName("disk", d.Name); err != nil {
			return err
		}
		if slices.ContainsFunc(u.spec.Disks, func(o api.DiskRef) bool { return o.Name == d.Name }) {
			return api.Errorf(api.CodeConflict, "machine %s has a disk named %s already: name the new one with NAME=PATH", u.m.Name, d.Name)
		}
		u.spec.Disks = append(u.spec.Disks, api.DiskRef{Name: d.Name, Path: d.Path})
	}
	// A disk removed in this same update may be added again under another
	// name; every other machine's disks, and this one's kept ones, count.
	others := api.ProtectRequest{Disks: req.AddDisks}
	if err := u.s.refuseProtectedDisksExcept(ctx, u.agent, others, u.m.Name, u.spec.Disks[:len(u.spec.Disks)-len(req.AddDisks)]); err != nil {
		return err
	}
	paths := make([]string, len(req.AddDisks))
	for i, d := range req.AddDisks {
		paths[i] = d.Path
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var check msg.CheckResponse
	if err := u.s.agents.call(cctx, u.agent.ID, u.agent.Name, msg.MethodCheck, msg.CheckRequest{Paths: paths}, &check); err != nil {
		return apiErr(fmt.Errorf("agent %s must check the new disk(s) and is not reachable: %w", u.agent.Name, err))
	}
	var bad []string
	for i, d := range check.Disks {
		if d.Error != "" {
			bad = append(bad, fmt.Sprintf("disk %s (%s): %s", req.AddDisks[i].Name, d.Path, d.Error))
		}
	}
	if len(bad) > 0 || len(check.Disks) != len(req.AddDisks) {
		return api.Errorf(api.CodeInvalid, "agent %s cannot protect the new disk(s) of %s: %s", u.agent.Name, u.m.Name, strings.Join(bad, "; "))
	}
	base := len(u.spec.Disks) - len(req.AddDisks)
	for i, d := range req.AddDisks {
		u.spec.Disks[base+i].Format = check.Disks[i].Format
		u.added = append(u.added, u.spec.Disks[base+i])
		u.notes = append(u.notes, fmt.Sprintf("disk %s (%s) is added: the next cycle sends it alone, in full; the other disks keep their block maps and send only changes", d.Name, d.Path))
	}
	return nil
}

// refuseProtectedDisksExcept is refuseProtectedDisks for an update of
// machine self: its own disks count as kept (not as its stored spec).
func (s *Server) refuseProtectedDisksExcept(ctx context.Context, a catalog.Agent, req api.ProtectRequest, self string, kept []api.DiskRef) error {
	if err := s.refuseProtectedDisks(ctx, a, req, self); err != nil {
		return err
	}
	for _, d := range req.Disks {
		for _, k := range kept {
			if cleanPath(k.Path) == cleanPath(d.Path) {
				return api.Errorf(api.CodeConflict, "disk %s (%s) is machine %s's disk %s already", d.Name, d.Path, self, k.Name)
			}
		}
	}
	return nil
}

// apply stores the change and tells the agent. A rename or a block-size
// change drops what the repository holds under the old terms, under
// specMu: no cycle checked against the old disks begins meanwhile, and
// every later one is checked against the new (cycleMatchesSpec).
func (u *machineUpdate) apply(ctx context.Context) error {
	s, old := u.s, u.m.Name
	m := u.m
	m.Policy, m.Target, m.Spec = u.spec.Policy, u.spec.Target, u.spec
	if u.dropPending || u.blockSize != 0 {
		m.State = catalog.StateSyncing // a new initial sync: no point until it ends
	}
	if err := func() error {
		s.specMu.Lock()
		defer s.specMu.Unlock()
		if err := s.cat.UpdateMachine(ctx, m); err != nil {
			return apiErr(err)
		}
		if u.newName != "" {
			if err := s.cat.RenameMachine(ctx, old, u.newName); err != nil {
				return apiErr(err)
			}
			m.Name = u.newName
			m.Spec.Machine = u.newName
			if err := s.cat.UpdateMachine(ctx, m); err != nil {
				return apiErr(err)
			}
		}
		if u.newName == "" && u.blockSize == 0 {
			return nil
		}
		s.ing.ForgetMachine(old)
		s.replMu.Lock()
		delete(s.repl, old)
		s.replMu.Unlock()
		if err := s.repo.DeleteMachine(ctx, old); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		return nil
	}(); err != nil {
		return err
	}
	// The agent takes the new disks (or stops the old loop) now; until it
	// has them its cycles are refused and it is pushed the config again.
	if err := s.pushConfig(ctx, m.AgentID); err != nil {
		s.log.Warn("config push failed; the agent gets it at its next connection", "agent", u.agent.Name, "err", err)
	}
	if u.targetChanged && s.stager != nil && m.Target != "" {
		s.stager.Kick(m.Name)
	}
	s.log.Info("machine updated", "machine", m.Name, "renamed_from", cmpName(old, m.Name), "policy", m.Policy, "target", m.Target,
		"disks", len(m.Spec.Disks), "added", len(u.added))
	return nil
}

func cmpName(old, now string) string {
	if old == now {
		return ""
	}
	return old
}

// CommitPreview says what `ferry commit M` would delete, by the rule the
// commit job follows (failover.CommitSplit); it changes nothing.
func (s *Server) CommitPreview(ctx context.Context, machine string) (api.CommitPreview, error) {
	if err := s.requireState(ctx, machine, lifecycle.Commit); err != nil {
		return api.CommitPreview{}, err
	}
	m, err := s.cat.Machine(ctx, machine)
	if err != nil {
		return api.CommitPreview{}, apiErr(err)
	}
	if m.Failover == nil {
		return api.CommitPreview{}, api.Errorf(api.CodeFailedPrecondition, "machine %s is %s but records no failover", machine, m.State)
	}
	pts, err := s.repo.Points(ctx, machine)
	if err != nil {
		return api.CommitPreview{}, err
	}
	del, kept := failover.CommitSplit(pts, m.Failover.PointID)
	out := api.CommitPreview{Machine: machine, Deleted: []api.Point{}, Kept: []api.Point{}}
	for _, p := range del {
		out.Deleted = append(out.Deleted, apiPoint(p))
	}
	for _, p := range kept {
		out.Kept = append(out.Kept, apiPoint(p))
	}
	return out, nil
}
