package failover

import (
	"context"
	"errors"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// homeAdoptRequest names the home disks of the newest point: each disk
// of the point and the home file or device it is kept in.
func (j *job) homeAdoptRequest(ctx context.Context, name string, md *machineData) (msg.TargetAdoptRequest, error) {
	m, err := j.machine(ctx, name)
	if err != nil {
		return msg.TargetAdoptRequest{}, err
	}
	pts, err := j.e.Repo.Points(ctx, name)
	if err != nil {
		return msg.TargetAdoptRequest{}, err
	}
	if len(pts) == 0 {
		return msg.TargetAdoptRequest{}, refuse("machine %s has no point left: its commit predates re-protection; protect it again for a full copy", name)
	}
	newest := pts[len(pts)-1]
	req := msg.TargetAdoptRequest{Ref: md.homeRef(name)}
	byName := map[string]string{}
	for _, d := range m.Spec.Disks {
		byName[d.Name] = d.Path
	}
	for _, d := range newest.Disks {
		p, ok := byName[d.Name]
		if !ok {
			return msg.TargetAdoptRequest{}, refuse("disk %s of point %d has no home disk", d.Name, newest.ID)
		}
		req.Disks = append(req.Disks, msg.TargetDisk{Name: d.Name, Size: d.Size, BlockSize: d.BlockSize})
		req.Paths = append(req.Paths, p)
	}
	return req, nil
}

// checkHome asks the home agent, before anything is stopped or written,
// whether the home disks can be updated in place: a VMDK or VHD home, or
// the disk the home agent itself runs from (a physical or in-guest
// source), is refused with the reason and the alternatives. An agent of
// an earlier version, which cannot say, is asked again at adopt-home.
func (j *job) checkHome(ctx context.Context, name string, md *machineData) error {
	req, err := j.homeAdoptRequest(ctx, name, md)
	if err != nil {
		return err
	}
	err = j.e.Agents.Call(ctx, md.SourceAgent, msg.MethodTargetCheckHome, req, &struct{}{})
	if errors.Is(err, protocol.ErrNotFound) {
		j.r.Note("%s: the home agent cannot check its disks before they are adopted (an earlier version): adopt-home checks them", name)
		return nil
	}
	return agentErr(err, "machine %s: the home disks cannot be updated in place", name)
}
