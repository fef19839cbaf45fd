package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
)

// serve answers the streams the controller opens over this session.
func (a *Agent) serve(ctx context.Context, sess *session.Session) {
	mux := a.mux()
	for {
		st, err := sess.Accept(ctx)
		if err != nil {
			return
		}
		go func() {
			defer st.Close()
			switch st.Kind() {
			case protocol.KindControl:
				rpc.ServeStream(ctx, st, mux.Serve)
			case protocol.KindRestore:
				a.serveRestore(ctx, st)
			default:
				st.Reset(protocol.Errorf(protocol.CodeInvalid, "the agent does not serve %s streams", st.Kind()))
			}
		}()
	}
}

func (a *Agent) mux() *rpc.Mux {
	m := &rpc.Mux{}
	m.Handle(msg.MethodTime, func(context.Context, json.RawMessage) (any, error) {
		return msg.TimeResponse{UnixNano: a.cfg.Now().UnixNano()}, nil
	})
	m.Handle(msg.MethodConfig, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.ConfigRequest](body)
		if err != nil {
			return nil, err
		}
		a.applyConfig(req.Machines)
		return struct{}{}, nil
	})
	m.Handle(msg.MethodInventory, func(ctx context.Context, _ json.RawMessage) (any, error) {
		return msg.InventoryResponse{Items: a.inventory()}, nil
	})
	m.Handle(msg.MethodCheck, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.CheckRequest](body)
		if err != nil {
			return nil, err
		}
		out := msg.CheckResponse{Disks: []msg.CheckedDisk{}}
		for _, p := range req.Paths {
			out.Disks = append(out.Disks, checkDisk(ctx, p))
		}
		return out, nil
	})
	m.Handle(msg.MethodCycleNow, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.CycleNowRequest](body)
		if err != nil {
			return nil, err
		}
		id, err := a.cycleNow(ctx, req.Machine, req.App)
		if err != nil {
			return nil, err
		}
		return msg.CycleNowResponse{PointID: id}, nil
	})
	m.Handle(msg.MethodDriver, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.DriverRequest](body)
		if err != nil {
			return nil, err
		}
		return a.runDriver(ctx, req)
	})
	m.Handle(msg.MethodPlanScript, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.PlanScriptRequest](body)
		if err != nil {
			return nil, err
		}
		if err := a.allow(permPlanScripts); err != nil {
			return nil, err
		}
		return runPlanScript(ctx, req)
	})
	a.handleUpgrade(m)
	a.handleTarget(m)
	a.handleDrill(m)
	a.handleShip(m)
	return m
}

// checkDisk says whether a path can be protected, and why not. Beyond the
// headers it walks the allocation tables (Extents), so a broken grain
// table or L2 table is refused at protect time rather than on the first
// cycle.
func checkDisk(ctx context.Context, path string) msg.CheckedDisk {
	out := msg.CheckedDisk{Path: path}
	info, err := disk.Probe(path)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	src, err := disk.Open(path, disk.OpenOptions{})
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer src.Close()
	out.Format, out.Size = string(info.Format), src.Size()
	if out.Size == 0 {
		out.Error = "the disk is empty (size 0)"
		return out
	}
	if _, err := src.Extents(ctx); err != nil {
		out.Error = err.Error()
	}
	return out
}

// runDriver runs a machine's source-driver action.
func (a *Agent) runDriver(ctx context.Context, req msg.DriverRequest) (msg.DriverResponse, error) {
	ml := a.machine(req.Machine)
	if ml == nil {
		return msg.DriverResponse{}, protocol.Errorf(protocol.CodeNotFound, "machine %s is not protected by this agent", req.Machine)
	}
	if req.Kind != "" && req.Kind != msg.DriverExec {
		return runHomeHypervisor(ctx, req.Hypervisor, req.Action, req.Env)
	}
	d := ml.driver(req.Env)
	if d.Has(req.Action) { // an action without a command runs nothing (and fails as not configured)
		if err := a.allow(permExecDrivers); err != nil {
			return msg.DriverResponse{}, err
		}
	}
	if req.Timeout > 0 {
		d.Timeout = req.Timeout
	}
	if req.Action == driver.ActionStatus {
		s, err := d.Status(ctx)
		if err != nil {
			return msg.DriverResponse{}, protocol.Errorf(protocol.CodeFailedPrecondition, "%v", err)
		}
		return msg.DriverResponse{Status: s}, nil
	}
	out, err := d.Run(ctx, req.Action)
	if err != nil {
		return msg.DriverResponse{Output: out}, protocol.Errorf(protocol.CodeFailedPrecondition, "%v", err)
	}
	return msg.DriverResponse{Output: out}, nil
}

// cycleNow asks a machine's loop to run a cycle now and waits for its point.
func (a *Agent) cycleNow(ctx context.Context, machine string, app bool) (int64, error) {
	ml := a.machine(machine)
	if ml == nil {
		return 0, protocol.Errorf(protocol.CodeNotFound, "machine %s is not protected by this agent", machine)
	}
	reply := make(chan cycleResult, 1)
	select {
	case ml.trigger <- trigger{app: app, reply: reply}:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(time.Minute):
		return 0, protocol.Errorf(protocol.CodeBusy, "machine %s did not accept a cycle request", machine)
	}
	select {
	case r := <-reply:
		if r.err != nil {
			return 0, fmt.Errorf("cycle for %s: %w", machine, r.err)
		}
		return r.point, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}
