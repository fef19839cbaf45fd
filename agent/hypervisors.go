package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/agent/driver/hyperv"
	"github.com/ferrydr/ferry/agent/driver/libvirt"
	"github.com/ferrydr/ferry/agent/driver/vsphere"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// hypervisorKind is one row of the driver table: how to build a driver of
// that kind from its options, and how to check the options and reach the
// hypervisor up front (targets add); and the same at a machine's home site
// (protect --driver), where the driver only powers the existing machine.
type hypervisorKind struct {
	New      func(opts map[string]string) (driver.Hypervisor, error)
	Validate func(ctx context.Context, opts map[string]string) error
	// NewHome and ValidateHome are the home site's (nil: as New and Validate).
	NewHome      func(opts map[string]string) (driver.Hypervisor, error)
	ValidateHome func(ctx context.Context, opts map[string]string) error
}

// ErrDriverNotBuilt means this agent has no implementation of a driver kind.
var ErrDriverNotBuilt = errors.New("driver not built into this agent")

// hypervisorKinds is the table kind → constructor. The exec row serves
// validation and the Hypervisor interface; exec requests themselves keep
// their own path (runTargetDriver, runDriver) with their output.
func hypervisorKinds() map[string]hypervisorKind {
	return map[string]hypervisorKind{
		msg.DriverExec: {
			New: func(map[string]string) (driver.Hypervisor, error) { return &driver.ExecHypervisor{}, nil },
			Validate: func(_ context.Context, opts map[string]string) error {
				if len(opts) != 0 {
					return &driver.Error{Driver: msg.DriverExec, Op: "validate", Kind: driver.KindInvalid,
						Err: fmt.Errorf("the exec driver takes no options (its commands are --start, --stop, …)")}
				}
				return nil
			},
		},
		msg.DriverLibvirt: {
			New:          func(opts map[string]string) (driver.Hypervisor, error) { return libvirt.New(opts) },
			Validate:     libvirt.Validate,
			NewHome:      libvirt.NewHome,
			ValidateHome: libvirt.ValidateHome,
		},
		msg.DriverVSphere: {
			New:          func(o map[string]string) (driver.Hypervisor, error) { return vsphere.New(o) },
			Validate:     vsphere.Validate,
			NewHome:      vsphere.NewHome,
			ValidateHome: vsphere.ValidateHome,
		},
		msg.DriverHyperV: {
			New:          func(o map[string]string) (driver.Hypervisor, error) { return hyperv.New(o) },
			Validate:     hyperv.Validate,
			NewHome:      hyperv.NewHome,
			ValidateHome: hyperv.ValidateHome,
		},
	}
}

func notBuilt(kind string) hypervisorKind {
	err := func() error {
		return &driver.Error{Driver: kind, Op: "new", Kind: driver.KindInvalid, Err: fmt.Errorf("%s: %w", kind, ErrDriverNotBuilt)}
	}
	return hypervisorKind{
		New:      func(map[string]string) (driver.Hypervisor, error) { return nil, err() },
		Validate: func(context.Context, map[string]string) error { return err() },
	}
}

func lookupKind(kind string) (hypervisorKind, error) {
	k, ok := hypervisorKinds()[kind]
	if !ok {
		return hypervisorKind{}, protocol.Errorf(protocol.CodeInvalid, "driver %q: want exec, libvirt, vsphere or hyperv", kind)
	}
	return k, nil
}

// home is k as a machine's home site uses it.
func (k hypervisorKind) home() hypervisorKind {
	if k.NewHome != nil {
		k.New = k.NewHome
	}
	if k.ValidateHome != nil {
		k.Validate = k.ValidateHome
	}
	return k
}

// validateHypervisor serves target.validate: the driver's options, then a
// connection to its hypervisor and the networks the target maps to.
func validateHypervisor(ctx context.Context, req msg.TargetValidateRequest) error {
	k, err := lookupKind(req.Kind)
	if err != nil {
		return err
	}
	if req.Home {
		if len(req.Networks) > 0 || req.Dir != "" {
			return protocol.Errorf(protocol.CodeInvalid, "a home site's driver check takes no networks or directory")
		}
		if err := k.home().Validate(ctx, req.Options); err != nil {
			return driverWireError(err)
		}
		return nil
	}
	opts := maps.Clone(req.Options)
	if opts == nil {
		opts = map[string]string{}
	}
	if req.Kind != msg.DriverExec && len(req.Networks) > 0 {
		opts[libvirt.OptNetworks] = strings.Join(req.Networks, ",") // the same key in every hypervisor driver
	}
	if req.Kind == msg.DriverVSphere && opts[vsphere.OptMount] == "" && req.Dir != "" {
		opts[vsphere.OptMount] = req.Dir // jobs default the mount to the target directory: probe that it is the datastore
	}
	if err := k.Validate(ctx, opts); err != nil {
		return driverWireError(err)
	}
	return nil
}

// specFromMsg is the driver's view of the machine.
func specFromMsg(s *msg.MachineSpec, env map[string]string) driver.Spec {
	out := driver.Spec{Name: s.Name, Machine: s.Machine, Test: s.Test, CPUs: s.CPUs, Memory: s.Memory,
		Firmware: s.Firmware, NewMACs: s.NewMACs, Env: env}
	for _, n := range s.NICs {
		out.NICs = append(out.NICs, driver.NIC{Name: n.Name, Network: n.Network, MAC: n.MAC, Address: n.Address, Gateway: n.Gateway})
	}
	for _, d := range s.Disks {
		out.Disks = append(out.Disks, driver.Disk{Name: d.Name, Path: d.Path, Format: d.Format})
	}
	return out
}

// runHypervisor performs a driver action of a non-exec kind at a target,
// or at the machine's home site when the request says Home (a revert's
// start, which reaches the home agent as a target driver request).
func runHypervisor(ctx context.Context, h msg.Hypervisor, action string, env map[string]string) (msg.DriverResponse, error) {
	if h.Home {
		return runHomeHypervisor(ctx, h, action, env)
	}
	k, err := lookupKind(h.Kind)
	if err != nil {
		return msg.DriverResponse{}, err
	}
	return runKind(ctx, k, h, action, env)
}

// runHomeHypervisor performs a source-driver action of a non-exec kind: the
// driver at the machine's home site, which only powers the existing machine.
func runHomeHypervisor(ctx context.Context, h msg.Hypervisor, action string, env map[string]string) (msg.DriverResponse, error) {
	k, err := lookupKind(h.Kind)
	if err != nil {
		return msg.DriverResponse{}, err
	}
	return runKind(ctx, k.home(), h, action, env)
}

func runKind(ctx context.Context, k hypervisorKind, h msg.Hypervisor, action string, env map[string]string) (msg.DriverResponse, error) {
	if h.Spec == nil {
		return msg.DriverResponse{}, protocol.Errorf(protocol.CodeInvalid, "driver %s %s: the request has no machine spec", h.Kind, action)
	}
	d, err := k.New(h.Options)
	if err != nil {
		return msg.DriverResponse{}, driverWireError(err)
	}
	spec := specFromMsg(h.Spec, env)
	switch action {
	case driver.ActionStart:
		err = d.Start(ctx, spec)
	case driver.ActionStop:
		err = d.Stop(ctx, spec)
	case driver.ActionPause:
		err = d.Pause(ctx, spec)
	case driver.ActionResume:
		err = d.Resume(ctx, spec)
	case msg.ActionRemove:
		err = d.Remove(ctx, spec)
	case driver.ActionStatus:
		s, err := d.Status(ctx, spec)
		if err != nil {
			return msg.DriverResponse{}, driverWireError(err)
		}
		return msg.DriverResponse{Status: s}, nil
	default:
		return msg.DriverResponse{}, protocol.Errorf(protocol.CodeInvalid, "driver action %q: want start, stop, pause, resume, status or remove", action)
	}
	if err != nil {
		return msg.DriverResponse{}, driverWireError(err)
	}
	return msg.DriverResponse{}, nil
}

// driverWireError gives a classified driver error its wire code: transient
// becomes unavailable (the controller's jobs retry that and nothing else),
// not found not_found, auth unauthorized, invalid invalid, already running
// conflict; anything else, timeouts included, failed_precondition, as exec
// failures always were: a driver timeout fails the step and is not retried.
// The message keeps the driver's words (a timeout's names its bound).
func driverWireError(err error) error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return err
	}
	code := protocol.CodeFailedPrecondition
	switch driver.KindOf(err) {
	case driver.KindTransient:
		code = protocol.CodeUnavailable
	case driver.KindNotFound:
		code = protocol.CodeNotFound
	case driver.KindAuth:
		code = protocol.CodeUnauthorized
	case driver.KindInvalid:
		code = protocol.CodeInvalid
	case driver.KindAlreadyRunning:
		code = protocol.CodeConflict
	}
	return protocol.Errorf(code, "%v", err)
}
