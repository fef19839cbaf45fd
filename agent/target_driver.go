package agent

import (
	"context"
	"maps"
	"time"

	"github.com/ferrydr/ferry/agent/apply"
	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Environment a target driver request may use to name the set a start
// runs on (msg.TargetDriverRequest.Ref is the explicit form).
const (
	envSet     = "FERRY_SET"
	envDir     = "FERRY_DIR"
	envMachine = "FERRY_MACHINE"
)

// runTargetDriver runs a target's exec driver action. A start first marks
// the set the machine runs on as Written — before the machine can write,
// so a crash in between errs on the safe side (the set needs a forced
// move) — and does not run when the set cannot be marked.
func runTargetDriver(ctx context.Context, site *apply.Site, req msg.TargetDriverRequest) (msg.DriverResponse, error) {
	hyper := req.Kind != "" && req.Kind != msg.DriverExec
	switch req.Action {
	case driver.ActionStart, driver.ActionStop, driver.ActionPause, driver.ActionResume, driver.ActionStatus:
	case msg.ActionRemove:
		if !hyper {
			return msg.DriverResponse{}, protocol.Errorf(protocol.CodeInvalid, "driver action remove needs a hypervisor driver (libvirt, vsphere, hyperv)")
		}
	default:
		return msg.DriverResponse{}, protocol.Errorf(protocol.CodeInvalid, "driver action %q: want start, stop, pause, resume or status", req.Action)
	}
	if req.TimeoutS < 0 {
		return msg.DriverResponse{}, protocol.Errorf(protocol.CodeInvalid, "driver timeout %d s is negative", req.TimeoutS)
	}
	env := maps.Clone(req.Env)
	if env == nil {
		env = map[string]string{}
	}
	if env[envMachine] == "" && req.Machine != "" {
		env[envMachine] = req.Machine
	}
	if req.Action == driver.ActionStart {
		if ref, ok := startedSet(req, env); ok {
			if err := site.MarkWritten(ctx, ref); err != nil {
				return msg.DriverResponse{}, err
			}
		}
	}
	if hyper {
		if env[envDir] == "" && req.Ref != nil {
			env[envDir] = req.Ref.Dir // the target directory: vsphere's datastore mount by default
		}
		return runHypervisor(ctx, req.Hypervisor, req.Action, env)
	}
	d := driver.Exec{Commands: driver.Commands(req.Commands), Env: env, Timeout: time.Duration(req.TimeoutS) * time.Second}
	if req.Action == driver.ActionStatus {
		s, err := d.Status(ctx)
		if err != nil {
			return msg.DriverResponse{}, protocol.Errorf(protocol.CodeFailedPrecondition, "machine %s: %v", req.Machine, err)
		}
		return msg.DriverResponse{Status: s}, nil
	}
	out, err := d.Run(ctx, req.Action)
	if err != nil {
		return msg.DriverResponse{Output: out}, protocol.Errorf(protocol.CodeFailedPrecondition, "machine %s: %v", req.Machine, err)
	}
	return msg.DriverResponse{Output: out}, nil
}

// startedSet is the set a start runs on: Ref, or FERRY_SET in FERRY_DIR
// of FERRY_MACHINE. A FERRY_SET without a directory is still returned, so
// that marking it fails with invalid rather than nothing being marked.
func startedSet(req msg.TargetDriverRequest, env map[string]string) (msg.TargetRef, bool) {
	if req.Ref != nil {
		return *req.Ref, true
	}
	set, ok := env[envSet]
	if !ok || set == "" {
		return msg.TargetRef{}, false
	}
	return msg.TargetRef{Dir: env[envDir], Machine: env[envMachine], Set: set}, true
}
