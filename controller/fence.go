package controller

import (
	"context"
	"time"
)

// fenceTimeout bounds one agent's fences (a stop, its wait, a hash-resync
// ship of the disks).
const fenceTimeout = 15 * time.Minute

// fenceAgent runs, when an agent has said hello and before it gets its
// configuration, the fences owed at the sites it serves
// (failover.Engine.Fence): the copy of a machine an unplanned failback
// could not reach is stopped through the target driver and its disks kept
// as recovery-divergent-<job> before the agent replicates or stages
// anything. A fence that fails is logged and tried again at the next
// connection (and by a forward re-protect, which waits for it).
func (s *Server) fenceAgent(ctx context.Context, c *agentConn) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fenceTimeout)
	defer cancel()
	if err := s.fo.Fence(ctx, c.agentID); err != nil {
		s.log.Warn("fence failed", "agent", c.name, "err", err)
	}
}
