package failover

import (
	"context"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/protocol/msg"
)

// CheckMove completes a plan dry run's check of one member whose
// single-machine dry run chose c.PointID: the point's time and
// consistency, the target, the free space in its directory and what the
// move may write there at most — the whole disks for a new set or a test
// clone (a reflink clone needs less), else the blocks the points after
// the staged one changed. It changes nothing.
func (e *Engine) CheckMove(ctx context.Context, c *api.MachineCheck, targetName string, test bool) error {
	m, err := e.Cat.Machine(ctx, c.Machine)
	if err != nil {
		return err
	}
	t, agentID, err := e.machineTarget(ctx, m, targetName)
	if err != nil {
		return err
	}
	c.Target, c.TargetDir = t.Name, t.Dir
	pts, err := e.Repo.Points(ctx, m.Name)
	if err != nil {
		return err
	}
	var size int64
	for _, p := range pts {
		if p.ID == c.PointID {
			c.PointTime, c.Consistency = p.Instant, string(p.Consistency)
			for _, d := range p.Disks {
				size += d.Size
			}
		}
	}
	if !e.Agents.Connected(agentID) {
		return unavailable("target agent of %s is not connected", t.Name)
	}
	var st msg.TargetStatusResponse
	if err := e.Agents.Call(ctx, agentID, msg.MethodTargetStatus, msg.TargetStatusRequest{Dir: t.Dir, Machine: m.Name}, &st); err != nil {
		return err
	}
	c.FreeBytes = st.FreeBytes
	staged, ok := st.Sets[setStaged]
	if test || !ok || staged.Written {
		c.NeedBytes = size
		return nil
	}
	for _, p := range pts {
		if p.ID > staged.Point && p.ID <= c.PointID && len(p.Disks) > 0 {
			c.NeedBytes += p.Changed * int64(p.Disks[0].BlockSize)
		}
	}
	return nil
}
