package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/protocol"
)

// Ownership: which agent acts for a machine — ships its cycles, references
// its stored chunks, reports its status. It is decided here once, from the
// machine's lifecycle in the catalog, and everything that lets an agent
// touch a machine asks this (docs/security.md "Hostile agent").
//
//   - At home (active site "home", direction "forward"), the machine's
//     source agent acts for it.
//   - When the machine runs at the recovery site (active site "recovery": a
//     failover moved it there) or replicates from the recovery site back
//     home (direction "reverse"), the agent of that site acts for it: the
//     agent of the target in the current failover record, else of the
//     machine's configured target. The source agent then does not.
//
// One exception, for the length of one request: an agent the controller
// asks to ship a named point of the machine (target.ship; for example the
// home agent keeping the home disks as home-divergent-<job> before
// re-protection overwrites them) may run that cycle (shipGrants).
//
// A test failover leaves the machine active at home: only its source agent
// acts for it. Nothing else (a name in a request, a hash an agent knows)
// makes an agent act for a machine.

// actingAgent returns the id of the agent acting for m. targetAgent looks
// up the agent of a target site by target name.
func actingAgent(m catalog.Machine, targetAgent func(target string) (string, error)) (string, error) {
	if !m.AtRecovery() && !m.Reversed() {
		return m.AgentID, nil
	}
	target := m.Target
	if m.Failover != nil && m.Failover.Target != "" {
		target = m.Failover.Target
	}
	if target == "" {
		return "", fmt.Errorf("machine %s is active at its target site but names no target", m.Name)
	}
	return targetAgent(target)
}

// actsFor reports whether agentID acts for machine m (see above).
func (s *Server) actsFor(ctx context.Context, agentID string, m catalog.Machine) (bool, error) {
	id, err := actingAgent(m, func(t string) (string, error) {
		_, a, err := s.cat.Target(ctx, t)
		return a, err
	})
	if errors.Is(err, catalog.ErrNotFound) {
		return false, nil // its target site is gone: nobody acts for it there
	}
	if err != nil {
		return false, err
	}
	return id != "" && id == agentID, nil
}

// requireActsFor loads a machine and refuses an agent that does not act
// for it: not found for an unknown machine, unauthorized otherwise.
func (s *Server) requireActsFor(ctx context.Context, agentID, machine string) (catalog.Machine, error) {
	m, err := s.cat.Machine(ctx, machine)
	if errors.Is(err, catalog.ErrNotFound) {
		return m, protocol.Errorf(protocol.CodeNotFound, "machine %s is not protected", machine)
	}
	if err != nil {
		return m, err
	}
	ok, err := s.actsFor(ctx, agentID, m)
	if err != nil {
		return m, err
	}
	if !ok {
		return m, protocol.Errorf(protocol.CodeUnauthorized, "machine %s: this agent does not act for it", machine)
	}
	return m, nil
}

// machinesOf lists the machines agentID acts for: the owners whose stored
// chunks its cycles may reference without sending them.
func (s *Server) machinesOf(ctx context.Context, agentID string) ([]string, error) {
	ms, err := s.cat.Machines(ctx, "")
	if err != nil {
		return nil, err
	}
	agents := map[string]string{}
	lookup := func(t string) (string, error) {
		if a, ok := agents[t]; ok {
			return a, nil
		}
		_, a, err := s.cat.Target(ctx, t)
		if err != nil {
			return "", err
		}
		agents[t] = a
		return a, nil
	}
	var out []string
	for _, m := range ms {
		id, err := actingAgent(m, lookup)
		if err != nil {
			if errors.Is(err, catalog.ErrNotFound) {
				continue // its target is gone: nobody acts for it there
			}
			return nil, err
		}
		if id == agentID {
			out = append(out, m.Name)
		}
	}
	return out, nil
}

// Point names Ferry gives its own points. An agent may end a cycle with
// one only while the controller has asked it to ship that very point
// (target.ship), so `points list` can trust them.
var reservedPointPrefixes = []string{"target-writes-", "home-divergent-", failover.RecoveryDivergentPrefix}

func reservedPointName(name string) bool {
	for _, p := range reservedPointPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// shipGrants are the reserved point names the controller has asked agents
// to use, live for the duration of the request that asked.
type shipGrants struct {
	mu     sync.Mutex
	grants map[shipGrant]int
}

type shipGrant struct{ agentID, machine, name string }

func (g *shipGrants) add(k shipGrant) func() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.grants == nil {
		g.grants = map[shipGrant]int{}
	}
	g.grants[k]++
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.grants[k]--; g.grants[k] <= 0 {
			delete(g.grants, k)
		}
	}
}

// hasMachine reports whether agentID has been asked to ship any named
// point of machine (its cycle's begin names no point yet).
func (g *shipGrants) hasMachine(agentID, machine string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, n := range g.grants {
		if n > 0 && k.agentID == agentID && k.machine == machine {
			return true
		}
	}
	return false
}

func (g *shipGrants) has(k shipGrant) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.grants[k] > 0
}
