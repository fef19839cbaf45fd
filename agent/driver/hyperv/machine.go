package hyperv

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ferrydr/ferry/agent/driver"
)

// Hyper-V states (the names VirtualMachine.State takes, ToString() of the
// Hyper-V module's VMState enumeration; Get-VM shows them:
// https://learn.microsoft.com/en-us/powershell/module/hyper-v/get-vm ; the
// full member list as Microsoft publishes it in its SdnDiagnostics module,
// https://www.powershellgallery.com/packages/SdnDiagnostics/1.2110.97.22330/Content/enum%5CVMState.ps1).
// up: powered on (paused counts: it holds the machine's memory and must be
// stopped); down: powered off or saved to disk; every other state is a
// transition that a retry will see end.
var (
	statesUp = []string{"Running", "Paused", "Pausing", "Resuming",
		"RunningCritical", "PausedCritical", "PausingCritical", "ResumingCritical"}
	statesDown = []string{"Off", "Saved", "FastSaved",
		"OffCritical", "SavedCritical", "FastSavedCritical"}
)

func isState(s string, set []string) bool {
	for _, x := range set {
		if s == x {
			return true
		}
	}
	return false
}

func paused(s string) bool { return s == "Paused" || s == "PausedCritical" }

// status maps a Hyper-V state to driver.Status*; a transition is a transient
// error.
func status(op string, vm *vmInfo) (string, error) {
	switch {
	case isState(vm.State, statesUp):
		return driver.StatusRunning, nil
	case isState(vm.State, statesDown):
		return driver.StatusStopped, nil
	}
	return "", classified(op, driver.KindTransient, fmt.Errorf("virtual machine %q is in state %q", vm.Name, vm.State))
}

// vmName is the Hyper-V name for spec: spec.Name, or the machine (+ "-test").
// A test machine never takes the production name.
func vmName(op string, spec driver.Spec) (string, error) {
	name := spec.Name
	if name == "" {
		name = spec.Machine
		if spec.Test {
			name += "-test"
		}
	}
	if name == "" || strings.TrimSpace(name) == "" {
		return "", invalid(op, "no machine name")
	}
	if spec.Test && name == spec.Machine {
		return "", invalid(op, "test machine named %q like the production machine; a test failover's machine is MACHINE-test", name)
	}
	return name, nil
}

// find returns the one virtual machine named name, nil if there is none.
func (d *Driver) find(ctx context.Context, op, name string) (*vmInfo, error) {
	r, err := d.run(ctx, op, opInspect, params{Name: name}, 0)
	if err != nil {
		return nil, err
	}
	switch len(r.VMs) {
	case 0:
		return nil, nil
	case 1:
		return &r.VMs[0], nil
	}
	return nil, invalid(op, "%d virtual machines are named %q; Ferry will not pick one", len(r.VMs), name)
}

// findSpec finds spec's machine and checks, when it exists, that its disks are
// spec's: Ferry never acts on a machine that only shares the name.
func (d *Driver) findSpec(ctx context.Context, op string, spec driver.Spec) (*vmInfo, error) {
	name, err := vmName(op, spec)
	if err != nil {
		return nil, err
	}
	vm, err := d.find(ctx, op, name)
	if err != nil || vm == nil {
		return vm, err
	}
	if len(spec.Disks) > 0 && !sameDisks(vm.Disks, spec.Disks) {
		kind := driver.KindInvalid
		if up, _ := status(op, vm); up == driver.StatusRunning {
			kind = driver.KindAlreadyRunning
		}
		return nil, classified(op, kind, fmt.Errorf("virtual machine %q (state %s) exists with disks %q, not the machine's %q; Ferry leaves it alone",
			vm.Name, vm.State, vm.Disks, diskPaths(spec.Disks)))
	}
	return vm, nil
}

// sameDisks compares as sets; Windows paths compare without case.
func sameDisks(have []string, want []driver.Disk) bool {
	if len(have) != len(want) {
		return false
	}
	for _, w := range want {
		found := false
		for _, h := range have {
			if strings.EqualFold(h, w.Path) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func diskPaths(disks []driver.Disk) []string {
	p := make([]string, len(disks))
	for i, d := range disks {
		p[i] = d.Path
	}
	return p
}

// createParams checks spec and maps it onto New-VM's world: generation from
// firmware, memory in 2 MiB units, VHDX/VHD disks, NICs on their switches
// (the test switch or none for a test), MACs kept unless NewMACs.
func (d *Driver) createParams(op string, spec driver.Spec) (params, error) {
	name, err := vmName(op, spec)
	if err != nil {
		return params{}, err
	}
	p := params{Name: name, CPUs: spec.CPUs, SecureBoot: d.secureBoot}
	switch spec.Firmware {
	case "", "bios":
		p.Generation = 1
	case "uefi":
		p.Generation = 2
	default:
		return params{}, invalid(op, "firmware %q: want bios or uefi", spec.Firmware)
	}
	if p.CPUs <= 0 {
		return params{}, invalid(op, "cpus %d: want at least 1", spec.CPUs)
	}
	if spec.Memory < minMemory {
		return params{}, invalid(op, "memory %d bytes: Hyper-V wants at least %d", spec.Memory, minMemory)
	}
	p.Memory = (spec.Memory + memoryAlign - 1) / memoryAlign * memoryAlign
	if len(spec.Disks) == 0 {
		return params{}, invalid(op, "no disks")
	}
	for _, disk := range spec.Disks {
		f := strings.ToLower(disk.Format)
		if f != "vhdx" && f != "vhd" {
			return params{}, invalid(op, "disk %q is %q: Hyper-V attaches VHDX (or VHD) files; give the target --format vhdx", disk.Name, disk.Format)
		}
		if f == "vhd" && p.Generation == 2 {
			return params{}, invalid(op, "disk %q is VHD: a Generation 2 (uefi) machine needs VHDX", disk.Name)
		}
		if disk.Path == "" {
			return params{}, invalid(op, "disk %q has no path", disk.Name)
		}
		p.Disks = append(p.Disks, disk.Path)
	}
	for _, nic := range spec.NICs {
		np := nicParam{Name: nic.Name}
		switch {
		case spec.Test:
			np.Switch = d.testSwitch // "" = not connected
		case nic.Network != "":
			np.Switch = nic.Network
		case d.sw != "":
			np.Switch = d.sw
		default:
			return params{}, invalid(op, "NIC %q has no Hyper-V switch: map its network (targets add --network) or set --switch", nic.Name)
		}
		if !spec.NewMACs && nic.MAC != "" {
			mac, err := hyperVMAC(nic.MAC)
			if err != nil {
				return params{}, invalid(op, "NIC %q: %w", nic.Name, err)
			}
			np.MAC = mac
		}
		p.NICs = append(p.NICs, np)
	}
	return p, nil
}

// hyperVMAC turns 52:54:00:12:34:56 (or with -, or bare) into the 12 hex
// digits Add-VMNetworkAdapter -StaticMacAddress takes.
func hyperVMAC(s string) (string, error) {
	h := strings.NewReplacer(":", "", "-", "", ".", "").Replace(s)
	if len(h) != 12 {
		return "", fmt.Errorf("MAC %q: want 6 bytes", s)
	}
	for _, c := range h {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return "", fmt.Errorf("MAC %q: not hexadecimal", s)
		}
	}
	return strings.ToUpper(h), nil
}

// Start creates the virtual machine from spec when it does not exist, then
// powers it on. An existing one is started as it is (never reconfigured), and
// only when its disks are spec's.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) error {
	const op = driver.ActionStart
	p, err := d.createParams(op, spec)
	if err != nil {
		return err
	}
	vm, err := d.findSpec(ctx, op, spec)
	if err != nil {
		return err
	}
	for _, nic := range spec.NICs {
		if nic.Address != "" {
			// Hyper-V has no guest customization the host can apply before
			// boot: the plan-script recipe in docs/drivers.md does it.
			d.log.Warn("re-IP is not applied by the hyperv driver; use a plan post-action script",
				"machine", spec.Machine, "nic", nic.Name, "address", nic.Address, "gateway", nic.Gateway)
		}
	}
	if vm == nil {
		r, err := d.run(ctx, op, opCreate, p, 0)
		if err != nil {
			return err
		}
		if len(r.VMs) != 1 {
			return classified(op, driver.KindUnknown, fmt.Errorf("create: %w: answered %d machines", ErrScript, len(r.VMs)))
		}
		vm = &r.VMs[0]
		d.log.Info("created virtual machine", "name", vm.Name, "id", vm.ID, "generation", p.Generation)
	}
	if paused(vm.State) {
		return d.simple(ctx, op, opResume, vm)
	}
	if s, err := status(op, vm); err != nil {
		if vm.State == "Starting" {
			return nil
		}
		return err
	} else if s == driver.StatusRunning {
		return nil
	}
	return d.simple(ctx, op, opStart, vm)
}

// simple runs an operation on a machine by Id.
func (d *Driver) simple(ctx context.Context, what, op string, vm *vmInfo) error {
	_, err := d.run(ctx, what, op, params{ID: vm.ID}, 0)
	return err
}

// existing finds spec's machine for an operation that needs one.
func (d *Driver) existing(ctx context.Context, op string, spec driver.Spec) (*vmInfo, error) {
	vm, err := d.findSpec(ctx, op, spec)
	if err != nil {
		return nil, err
	}
	if vm == nil {
		name, _ := vmName(op, spec)
		return nil, classified(op, driver.KindNotFound, fmt.Errorf("no virtual machine named %q", name))
	}
	return vm, nil
}

// Stop shuts the guest down (Stop-VM) and turns the machine off
// (Stop-VM -TurnOff) when that has not finished within the stop timeout or
// the guest cannot shut down (no shutdown integration service: an error
// that is not auth, not found or transient).
func (d *Driver) Stop(ctx context.Context, spec driver.Spec) error {
	const op = driver.ActionStop
	vm, err := d.existing(ctx, op, spec)
	if err != nil {
		return err
	}
	s, err := status(op, vm)
	if err != nil {
		return err
	}
	if s == driver.StatusStopped {
		return nil
	}
	if paused(vm.State) {
		if err := d.simple(ctx, op, opResume, vm); err != nil {
			return err
		}
	}
	_, err = d.run(ctx, op, opShutdown, params{ID: vm.ID}, d.stopTimeout)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	switch driver.KindOf(err) {
	case driver.KindAuth, driver.KindNotFound, driver.KindTransient:
		return err
	}
	d.log.Warn("guest shutdown did not finish; turning the virtual machine off", "name", vm.Name, "id", vm.ID, "err", err)
	if _, err2 := d.run(ctx, op, opTurnOff, params{ID: vm.ID}, 0); err2 != nil {
		return errors.Join(err2, err)
	}
	return nil
}

// Pause suspends a running machine (Suspend-VM); a paused one is left.
func (d *Driver) Pause(ctx context.Context, spec driver.Spec) error {
	const op = driver.ActionPause
	vm, err := d.existing(ctx, op, spec)
	if err != nil || paused(vm.State) {
		return err
	}
	return d.simple(ctx, op, opPause, vm)
}

// Resume resumes a paused machine (Resume-VM); a running one is left.
func (d *Driver) Resume(ctx context.Context, spec driver.Spec) error {
	const op = driver.ActionResume
	vm, err := d.existing(ctx, op, spec)
	if err != nil || vm.State == "Running" {
		return err
	}
	return d.simple(ctx, op, opResume, vm)
}

// Status reports the machine's power state (Get-VM State).
func (d *Driver) Status(ctx context.Context, spec driver.Spec) (string, error) {
	const op = driver.ActionStatus
	vm, err := d.findSpec(ctx, op, spec)
	if err != nil {
		return "", err
	}
	if vm == nil {
		return driver.StatusAbsent, nil
	}
	return status(op, vm)
}

// Remove turns the machine off when it is on and removes its definition
// (Remove-VM); its VHDX files stay. An absent machine is not an error.
func (d *Driver) Remove(ctx context.Context, spec driver.Spec) error {
	const op = "remove"
	vm, err := d.findSpec(ctx, op, spec)
	if err != nil || vm == nil {
		return err
	}
	if s, err := status(op, vm); err != nil {
		return err
	} else if s == driver.StatusRunning {
		if err := d.simple(ctx, op, opTurnOff, vm); err != nil {
			return err
		}
	}
	return d.simple(ctx, op, opRemove, vm)
}
