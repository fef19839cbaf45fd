package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/ferrydr/ferry/agent/apply"
	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
)

// stopped is the driver of a disk set whose machine the controller has
// stopped before shipping it: the view is of a powered-off machine.
type stopped struct{}

func (stopped) Has(action string) bool                      { return action == "status" }
func (stopped) Run(context.Context, string) (string, error) { return "", nil }
func (stopped) Status(context.Context) (string, error)      { return "stopped", nil }

var _ snapshot.Driver = stopped{}

// handleShip registers target.ship: the recovery site sends a disk set's
// content to the controller as a named point of the machine (the writes a
// failed-over machine made, kept before its disks move). Every block is
// compared with the controller's newest state by hash, so only what
// differs travels.
func (a *Agent) handleShip(m *rpc.Mux) {
	m.Handle(msg.MethodTargetShip, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.TargetShipRequest](body)
		if err != nil {
			return nil, err
		}
		dir, err := apply.SetDir(req.Ref.Dir, req.Ref.Machine, req.Ref.Set)
		if err != nil {
			return nil, err
		}
		st, err := apply.ReadState(dir)
		if err != nil {
			return nil, fmt.Errorf("disk set %s of %s: %w", req.Ref.Set, req.Ref.Machine, err)
		}
		cfg := msg.MachineConfig{Name: req.Ref.Machine}
		for _, d := range st.Disks {
			// The machine ran on its format copy when the target wants one.
			p, err := apply.RunningDiskPath(dir, d.Name)
			if err != nil {
				return nil, err
			}
			cfg.Disks = append(cfg.Disks, msg.DiskConfig{Name: d.Name, Path: p, BlockSize: d.BlockSize, Format: setFileFormat(dir, d.Name, p)})
		}
		id, err := a.runCycle(ctx, cycleParams{
			cfg: cfg, driver: stopped{}, resync: true, name: req.Name,
			mapDir: filepath.Join(a.state.Dir, "ship", req.Ref.Machine+"-"+req.Ref.Set),
			report: func(context.Context, msg.ReportRequest) {},
			beforeHash: func() {
				if a.cfg.TestPause != nil {
					a.cfg.TestPause(PauseShipHash)
				}
			},
		})
		if err != nil {
			return nil, err
		}
		return msg.TargetShipResponse{PointID: id}, nil
	})
}

// setFileFormat is the format of a file of a disk set: Ferry wrote the
// set's raw files (whose first bytes are the guest's: never read as a
// container, whatever magic the guest put there) and their format copies.
// A home set's files are the machine's own images: "" (detected, as any
// source's).
func setFileFormat(dir, name, path string) string {
	if path == apply.DiskPath(dir, name) {
		return string(disk.FormatRaw)
	}
	for _, f := range apply.ConvertFormats {
		if path == apply.ConvertedPath(dir, name, f) {
			return string(f)
		}
	}
	return ""
}
