package failover

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Stager keeps each machine's staged replica at its target as current as
// its newest point, by moving only changed blocks (DESIGN.md "Staging").
type Stager struct {
	e     *Engine
	mu    sync.Mutex
	dirty map[string]bool
	kick  chan struct{}
	// busy reports whether a job holds the machine's staged set.
	busy func(ctx context.Context, machine string) bool
	// deferred is each machine's last staging error (Run's goroutine
	// only): the info log says it once, not after every point.
	deferred map[string]string
}

// NewStager builds a stager; Run drives it.
func NewStager(e *Engine, busy func(ctx context.Context, machine string) bool) *Stager {
	return &Stager{e: e, dirty: map[string]bool{}, kick: make(chan struct{}, 1), busy: busy, deferred: map[string]string{}}
}

// Kick asks for a machine's staged replica to be brought forward.
func (s *Stager) Kick(machine string) {
	s.mu.Lock()
	s.dirty[machine] = true
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// KickAll marks every machine with a target.
func (s *Stager) KickAll(ctx context.Context) {
	ms, err := s.e.Cat.Machines(ctx, "")
	if err != nil {
		return
	}
	for _, m := range ms {
		if m.Target != "" {
			s.Kick(m.Name)
		}
	}
}

// Run stages until ctx ends; it also rechecks every machine periodically.
func (s *Stager) Run(ctx context.Context) {
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	s.KickAll(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-tick.C:
			s.KickAll(ctx)
			continue
		}
		for {
			s.mu.Lock()
			var name string
			for m := range s.dirty {
				name = m
				break
			}
			delete(s.dirty, name)
			s.mu.Unlock()
			if name == "" {
				break
			}
			err := s.stage(ctx, name)
			switch {
			case err == nil:
				delete(s.deferred, name)
			case ctx.Err() != nil:
			case s.deferred[name] != err.Error():
				s.deferred[name] = err.Error()
				s.e.Log.Info("staging deferred", "machine", name, "err", err)
			default:
				s.e.Log.Debug("staging deferred again", "machine", name, "err", err)
			}
		}
	}
}

// stage brings one machine's staged set to its newest point.
func (s *Stager) stage(ctx context.Context, name string) error {
	m, err := s.e.Cat.Machine(ctx, name)
	if err != nil || m.Target == "" {
		return nil
	}
	switch m.State {
	case catalog.StateSyncing, catalog.StateProtected, catalog.StateTestFailedOver:
	case catalog.StateReverseProtected, catalog.StateTestFailedBack:
		return s.stageHome(ctx, m)
	default:
		return nil // failed over: the staged set became the machine's disks
	}
	unlock := s.e.lockMoves(name)
	defer unlock()
	if s.busy(ctx, name) {
		return nil // a job moves the disks itself
	}
	return s.stageTo(ctx, name, m.Target)
}

// stageTo brings the staged set of a machine at a target to its newest
// point (the caller holds the machine's moves).
func (s *Stager) stageTo(ctx context.Context, name, target string) error {
	t, agentID, err := s.e.Cat.Target(ctx, target)
	if err != nil {
		return err
	}
	if !s.e.Agents.Connected(agentID) {
		return nil // kicked again when the agent connects
	}
	pts, err := s.e.Repo.Points(ctx, name)
	if err != nil || len(pts) == 0 {
		return err
	}
	newest := pts[len(pts)-1].ID
	var st msg.TargetStatusResponse
	if err := s.e.Agents.Call(ctx, agentID, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: t.Dir, Machine: name}, &st); err != nil {
		return err
	}
	set, ok := st.Sets["staged"]
	if ok && set.Point == newest && set.MovingTo == 0 && !set.Written {
		return nil
	}
	mv := Move{AgentID: agentID, Ref: msg.TargetRef{Dir: t.Dir, Machine: name, Set: "staged"}, Machine: name,
		SetPoint: set.Point, From: set.Point, MovingTo: set.MovingTo, To: newest, Create: !ok}
	if set.Written {
		mv.From = 0 // something wrote to it: rewrite everything ever written
	}
	start := time.Now()
	res, err := s.e.move(ctx, mv)
	if errors.Is(err, errNoKey) {
		return nil // kicked again on the next tick: the key may be installed by then
	}
	if err != nil {
		return err
	}
	// Debug: staging follows every point, and the controller's info log
	// says one line per cycle (point committed).
	s.e.Log.Debug("staged", "machine", name, "target", t.Name, "from", set.Point, "to", newest,
		"blocks", res.Blocks, "zero", res.ZeroBlocks, "bytes", res.Bytes, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// stageHome brings a machine's home disks, in place, to its newest point
// while it replicates home (reverse-protected). The home driver's status
// is checked before every move: nothing writes into disks a running
// machine uses (unless the administrator declared it off at re-protect).
func (s *Stager) stageHome(ctx context.Context, m catalog.Machine) error {
	if m.RoundTrip == nil || m.RoundTrip.InFlight != "" {
		return nil
	}
	if s.busy(ctx, m.Name) {
		return nil
	}
	if m.RoundTrip.Replica != "" {
		return s.stageReplica(ctx, m)
	}
	if !s.e.Agents.Connected(m.AgentID) {
		return nil // kicked again when the home agent connects
	}
	if homeStatus(m) && !m.RoundTrip.SourceIsOff {
		var resp msg.DriverResponse
		err := s.e.Agents.Call(ctx, m.AgentID, msg.MethodTargetDriver, msg.TargetDriverRequest{
			Machine: m.Name, Action: "status", Commands: msg.Driver(m.Spec.Driver), Hypervisor: sourceHypervisor(m),
			Env: map[string]string{"FERRY_MACHINE": m.Name}}, &resp)
		if err != nil {
			return err
		}
		if resp.Status == "running" {
			s.e.Log.Warn("not staging the home disks: the machine runs at home (split brain?)", "machine", m.Name)
			return nil
		}
	}
	pts, err := s.e.Repo.Points(ctx, m.Name)
	if err != nil || len(pts) == 0 {
		return err
	}
	newest := pts[len(pts)-1].ID
	start := time.Now()
	res, from, err := s.e.moveHomeSet(ctx, m, m.AgentID, m.RoundTrip.HomeDir, newest, "", 0)
	if err != nil {
		return err
	}
	if from != newest {
		s.e.Log.Debug("home disks staged", "machine", m.Name, // every point, as "staged" "from", from, "to", newest,
			"blocks", res.Blocks, "zero", res.ZeroBlocks, "bytes", res.Bytes, "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}
