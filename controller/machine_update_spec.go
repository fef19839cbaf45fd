package controller

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// cycleMatchesSpec refuses a forward cycle whose disks are not the
// machine's as the catalog has them now: an agent still on the
// configuration before `machines update` (a removed disk, an old block
// size) would otherwise make a point of the old disk set, or record a disk
// in a block size the repository then holds it in. The agent retries the
// cycle and, by then, has the pushed configuration. Named-point shipping
// (grants) and reverse replication read other disks and are not checked.
func (s *Server) cycleMatchesSpec(ctx context.Context, agentID string, req msg.CycleBeginRequest) error {
	if s.agents.grants.hasMachine(agentID, req.Machine) {
		return nil
	}
	m, err := s.cat.Machine(ctx, req.Machine)
	if err != nil || m.AtRecovery() || m.Reversed() {
		return nil // replicating() decided these
	}
	mc, err := s.machineConfig(ctx, m)
	if err != nil {
		return err
	}
	var want, got []string
	for _, d := range mc.Disks {
		want = append(want, fmt.Sprintf("%s/%d", d.Name, d.BlockSize))
	}
	for _, d := range req.Disks {
		got = append(got, fmt.Sprintf("%s/%d", d.Name, d.BlockSize))
	}
	if !slices.Equal(want, got) {
		s.spawn(func() {
			pctx, cancel := context.WithTimeout(s.runCtx, 30*time.Second)
			defer cancel()
			if err := s.pushConfig(pctx, agentID); err != nil {
				s.log.Warn("config push failed", "agent", agentID, "err", err)
			}
		})
		return protocol.Errorf(protocol.CodeUnavailable, "cycle of %s: the agent's disks (name/block size) %v are not the machine's %v: its configuration changed and is pushed again; retry",
			req.Machine, got, want)
	}
	return nil
}
