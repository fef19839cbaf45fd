package agent

import (
	"context"
	"encoding/json"
	"errors"
	"github.com/ferrydr/ferry/agent/driver"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/agent/repokey"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
)

// handleTarget registers the recovery-site operations (protocol/msg
// target.go) on the agent's RPC surface. The work is agent/apply's; errors
// carry its codes: invalid for bad names or paths, not_found for a missing
// set, exists for an occupied destination, failed_precondition for a set
// that does not hold what the request assumes or a driver command that
// failed, busy when the machine stayed held by another operation until the
// caller gave up. target.ship is the controller side's to register.
func (a *Agent) handleTarget(m *rpc.Mux) {
	site := a.site
	m.Handle(msg.MethodTargetStatus, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.TargetStatusRequest](body)
		if err != nil {
			return nil, err
		}
		sets, err := site.Status(ctx, req.Dir, req.Machine)
		if err != nil {
			return nil, err
		}
		return msg.TargetStatusResponse{Sets: sets, BytesWritten: site.BytesWritten(), RepositoryKey: a.repositoryKey(), FreeBytes: freeBytes(req.Dir)}, nil
	})
	m.Handle(msg.MethodTargetPromote, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.TargetRef](body)
		if err != nil {
			return nil, err
		}
		return struct{}{}, site.Promote(ctx, req.Dir, req.Machine)
	})
	m.Handle(msg.MethodTargetDemote, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.TargetRef](body)
		if err != nil {
			return nil, err
		}
		return struct{}{}, site.Demote(ctx, req.Dir, req.Machine)
	})
	m.Handle(msg.MethodTargetClone, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.TargetCloneRequest](body)
		if err != nil {
			return nil, err
		}
		return site.Clone(ctx, req.Dir, req.Machine, req.To)
	})
	m.Handle(msg.MethodTargetCloneHome, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.TargetCloneHomeRequest](body)
		if err != nil {
			return nil, err
		}
		return site.CloneHome(ctx, req.Ref, req.ToDir, req.To)
	})
	m.Handle(msg.MethodTargetRemove, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.TargetRef](body)
		if err != nil {
			return nil, err
		}
		return struct{}{}, site.Remove(ctx, req)
	})
	m.Handle(msg.MethodTargetConvert, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.TargetConvertRequest](body)
		if err != nil {
			return nil, err
		}
		return site.Convert(ctx, req.Ref, disk.Format(req.Format))
	})
	m.Handle(msg.MethodTargetAdopt, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.TargetAdoptRequest](body)
		if err != nil {
			return nil, err
		}
		return site.Adopt(ctx, req.Ref, req.Disks, req.Paths)
	})
	m.Handle(msg.MethodTargetCheckHome, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.TargetAdoptRequest](body)
		if err != nil {
			return nil, err
		}
		return struct{}{}, site.CheckHome(ctx, req.Disks, req.Paths)
	})
	m.Handle(msg.MethodTargetDriver, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.TargetDriverRequest](body)
		if err != nil {
			return nil, err
		}
		exec := driver.Exec{Commands: driver.Commands(req.Commands)}
		if (req.Kind == "" || req.Kind == msg.DriverExec) && exec.Has(req.Action) {
			if err := a.allow(permExecDrivers); err != nil {
				return nil, err
			}
		}
		return runTargetDriver(ctx, site, req)
	})
	m.Handle(msg.MethodTargetValidate, func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := rpc.Decode[msg.TargetValidateRequest](body)
		if err != nil {
			return nil, err
		}
		return struct{}{}, validateHypervisor(ctx, req)
	})
}

// serveRestore applies a restore stream to a disk set; apply.Site answers
// with the ack or an error frame, and logs the outcome.
func (a *Agent) serveRestore(ctx context.Context, st *session.Stream) {
	_, _ = a.site.ServeRestore(ctx, st)
}

// repositoryKey is the fingerprint of the repository key this agent holds
// ("" when none or unreadable: a move of sealed chunks then says why).
func (a *Agent) repositoryKey() string {
	if a.state == nil {
		return ""
	}
	k, err := repokey.Load(a.state.Dir)
	if err != nil {
		if !errors.Is(err, repokey.ErrNoKey) {
			a.log.Warn("the installed repository key cannot be read", "err", err)
		}
		return ""
	}
	return k.Fingerprint()
}
