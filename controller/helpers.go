package controller

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"regexp"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/points"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

type catalogTx = *sql.Tx

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// validName checks a user-chosen name: it becomes part of paths and URLs.
func validName(kind, name string) error {
	if !nameRE.MatchString(name) {
		return api.Errorf(api.CodeInvalid, "%s name %q: use 1–63 letters, digits, '.', '_' or '-', starting with a letter or digit", kind, name)
	}
	return nil
}

func newID(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// replicates reports whether the source agent ships cycles in a state.
func replicates(state string) bool {
	switch state {
	case catalog.StateSyncing, catalog.StateProtected, catalog.StateTestFailedOver:
		return true
	}
	return false
}

func (r *registry) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.live {
		c.sess.Close()
	}
}

// settled returns the machine with its state caught up with the
// repository: a point is committed before the catalog hears of it, so a
// reader in between (or a controller that crashed in between) would see a
// machine with a point still `syncing`. Lifecycle decisions read machines
// through here.
func (s *Server) settled(ctx context.Context, m catalog.Machine) (catalog.Machine, error) {
	if m.State != catalog.StateSyncing {
		return m, nil
	}
	pts, err := s.repo.Points(ctx, m.Name)
	if err != nil || len(pts) == 0 {
		return m, err
	}
	m.State = catalog.StateProtected
	if err := s.cat.UpdateMachine(ctx, m); err != nil {
		return m, err
	}
	return m, nil
}

// machine reads a machine's record through settled.
func (s *Server) machine(ctx context.Context, name string) (catalog.Machine, error) {
	m, err := s.cat.Machine(ctx, name)
	if err != nil {
		return m, err
	}
	return s.settled(ctx, m)
}

// pointCommitted moves a syncing machine to protected and applies retention.
// recordPointNote keeps how a new point's view was made (ingest's
// RecordNote).
func (s *Server) recordPointNote(ctx context.Context, machine string, point int64, method, reason string) error {
	return s.cat.RecordPointNote(ctx, catalog.PointNote{PointID: point, Machine: machine, Method: method, Reason: reason})
}

func (s *Server) pointCommitted(machine string, p storage.Point) {
	s.metrics.pointCommitted(machine, p)
	s.cycleCommitted(machine)
	ctx := context.Background()
	m, err := s.cat.Machine(ctx, machine)
	if err != nil {
		return
	}
	if m.State == catalog.StateSyncing || m.Resync {
		if m.State == catalog.StateSyncing {
			m.State = catalog.StateProtected
		}
		m.Resync = false // a committed cycle resynced everything
		if err := s.cat.UpdateMachine(ctx, m); err != nil {
			s.log.Warn("state update failed", "machine", machine, "err", err)
		}
	}
	if s.stager != nil {
		s.stager.Kick(machine)
	}
	s.spawn(func() { s.applyRetention(s.runCtx, m) })
}

// retentionWaits are the states whose points wait for the administrator's
// next action, however long that takes: a failed-over or failed-back
// machine may still change point (its points are what it can move to), and
// a committed or back-home machine's kept points are what its re-protect
// moves the other site's disks from by changed blocks. No new point
// arrives in these states, so retention would otherwise empty them.
var retentionWaits = map[string]bool{
	catalog.StateFailedOver: true, catalog.StateCommitted: true,
	catalog.StateFailedBack: true, catalog.StateBackHome: true,
}

func (s *Server) applyRetention(ctx context.Context, m catalog.Machine) {
	if retentionWaits[m.State] {
		return
	}
	pol, err := s.cat.Policy(ctx, m.Policy)
	if err != nil {
		return
	}
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()
	keep, err := s.newestVerified(ctx, m.Name)
	if err != nil {
		s.log.Warn("retention skipped: reading verified points failed", "machine", m.Name, "err", err)
		return
	}
	n, err := points.ApplyRetention(ctx, s.repo, m.Name, pol.Retention.Std(), s.now(), keep)
	if err != nil {
		s.log.Warn("retention failed", "machine", m.Name, "err", err)
	} else if n > 0 {
		// Debug: pruning follows every cycle at steady state, and the
		// info log says one line per cycle (point committed).
		s.log.Debug("retention pruned points", "machine", m.Name, "points", n)
	}
}

// retentionLoop applies retention to every machine each minute, for
// machines that stopped producing points.
func (s *Server) retentionLoop(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			ms, err := s.cat.Machines(ctx, "")
			if err != nil {
				continue
			}
			for _, m := range ms {
				s.applyRetention(ctx, m)
			}
		}
	}
}

// machineConfig is what an agent needs to replicate m.
func (s *Server) machineConfig(ctx context.Context, m catalog.Machine) (msg.MachineConfig, error) {
	pol, err := s.cat.Policy(ctx, m.Policy)
	if err != nil {
		return msg.MachineConfig{}, err
	}
	mc := msg.MachineConfig{
		Name: m.Name, RPEvery: pol.RPEvery.Std(), AppEvery: pol.AppEvery.Std(), Bandwidth: pol.Bandwidth,
		Driver: msg.Driver(m.Spec.Driver), PreSnapshot: m.Spec.PreSnapshot, PostSnapshot: m.Spec.PostSnapshot,
		Freeze: m.Spec.Freeze, Env: map[string]string{"FERRY_MACHINE": m.Name},
		// A live failover stops replication before any disk is touched;
		// the controller may still ask for one more cycle (cycle.now).
		Paused: m.Failover != nil && m.Failover.Set == "live",
		// Ingest.Begin checks DiskInfo.NewMap against the repository.
		NewDisksAlone: true,
	}
	bs := m.Spec.BlockSize
	if bs == 0 {
		bs = pol.BlockSize
	}
	for _, d := range m.Spec.Disks {
		// The format recorded at protect is forced ("" detects it).
		mc.Disks = append(mc.Disks, msg.DiskConfig{Name: d.Name, Path: d.Path, BlockSize: bs, Format: d.Format})
	}
	return mc, nil
}

// pushConfig sends an agent the machines it must replicate now.
func (s *Server) pushConfig(ctx context.Context, agentID string) error {
	c, ok := s.agents.get(agentID)
	if !ok {
		return nil // pushed at its next hello
	}
	ms, err := s.cat.Machines(ctx, agentID)
	if err != nil {
		return err
	}
	req := msg.ConfigRequest{Machines: []msg.MachineConfig{}}
	for _, m := range ms {
		if !replicates(m.State) {
			continue
		}
		mc, err := s.machineConfig(ctx, m)
		if err != nil {
			return err
		}
		req.Machines = append(req.Machines, mc)
	}
	// Machines replicating home from their recovery site: the recovery
	// agent acts for them (ownership.go) and reads their live disks.
	all, err := s.cat.Machines(ctx, "")
	if err != nil {
		return err
	}
	for _, m := range all {
		if !m.Reversed() || !reverseReplicates(m.State) || m.RoundTrip == nil {
			continue
		}
		if ok, err := s.actsFor(ctx, agentID, m); err != nil || !ok {
			continue
		}
		mc, err := s.reverseConfig(ctx, m)
		if err != nil {
			return err
		}
		req.Machines = append(req.Machines, mc)
	}
	return s.agents.call(ctx, agentID, c.name, msg.MethodConfig, req, &struct{}{})
}

// reverseReplicates reports whether the recovery agent ships cycles of a
// machine in a state (re-protection to failback's final cycle: paused
// while failing back, which still takes that cycle).
func reverseReplicates(state string) bool {
	switch state {
	case catalog.StateReprotecting, catalog.StateReverseProtected, catalog.StateFailingBack, catalog.StateTestFailedBack:
		return true
	}
	return false
}

// reverseConfig is what the recovery agent needs to replicate m home: its
// live disks at the recovery site as the source disks, and the target's
// driver (status, stop, start; the views it takes say how consistent they
// are, as for any source).
func (s *Server) reverseConfig(ctx context.Context, m catalog.Machine) (msg.MachineConfig, error) {
	mc, err := s.machineConfig(ctx, m)
	if err != nil {
		return mc, err
	}
	t, _, err := s.cat.Target(ctx, m.RoundTrip.Target)
	if err != nil {
		return mc, err
	}
	if len(m.RoundTrip.RecoveryPaths) != len(mc.Disks) {
		return mc, fmt.Errorf("machine %s: %d recovery-site disks recorded for %d disks", m.Name, len(m.RoundTrip.RecoveryPaths), len(mc.Disks))
	}
	for i := range mc.Disks {
		// Ferry wrote these files: the format is known, and a raw disk's
		// first bytes are the guest's, never read as a container.
		mc.Disks[i].Path, mc.Disks[i].Format = m.RoundTrip.RecoveryPaths[i], cmp.Or(t.Format, "raw")
	}
	mc.Driver = msg.Driver(t.Exec)
	mc.PreSnapshot, mc.PostSnapshot, mc.Freeze = "", "", nil
	mc.Env = map[string]string{"FERRY_MACHINE": m.Name, "FERRY_TARGET": t.Name, "FERRY_SET": "live"}
	mc.Paused = m.State == catalog.StateFailingBack
	return mc, nil
}

// damagedPoints counts the points that read data found damaged.
func damagedPoints(pts []storage.Point) int {
	n := 0
	for _, p := range pts {
		if p.Damaged {
			n++
		}
	}
	return n
}

// newestVerified is the id of the machine's newest point a drill verified
// (0: none).
func (s *Server) newestVerified(ctx context.Context, machine string) (int64, error) {
	v, err := s.cat.VerifiedPoints(ctx, machine)
	if err != nil || len(v) == 0 {
		return 0, err
	}
	pts, err := s.repo.Points(ctx, machine)
	if err != nil {
		return 0, err
	}
	return points.NewestVerified(pts, v), nil
}
