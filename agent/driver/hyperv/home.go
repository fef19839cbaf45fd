package hyperv

import (
	"context"

	"github.com/ferrydr/ferry/agent/driver"
)

// HomeOptions are the options the driver takes at a machine's home site,
// where it only powers the existing virtual machine: no switch, test
// network or Secure Boot setting applies there.
var HomeOptions = []string{OptPowerShell, OptStopTimeout, OptTimeout}

// NewHome makes the driver of a machine's home site: the Hyper-V host the
// machine already runs on. Start is Start-VM (or Resume-VM) of the existing
// machine, never New-VM; Stop, Pause, Resume and Status are the target
// driver's; Remove is refused.
func NewHome(opts map[string]string) (driver.Hypervisor, error) {
	known := []string{OptSwitch, OptTestNetwork, OptSecureBoot, OptNetworks}
	d, err := New(driver.HomeOptions(opts, HomeOptions, known))
	if err != nil {
		return nil, err
	}
	return driver.Home{Driver: driverName, D: d}, nil
}

// ValidateHome checks a home site's options and the host (powershell.exe,
// the Hyper-V module and access), as Validate does for a target.
func ValidateHome(ctx context.Context, opts map[string]string) error {
	if err := driver.CheckHomeOptions(driverName, opts, HomeOptions); err != nil {
		return err
	}
	return Validate(ctx, opts)
}

// PowerOn starts (Start-VM) or resumes (Resume-VM) the existing machine;
// a running or starting one is left. A machine that is not there is
// KindNotFound: at the home site nothing is created.
func (d *Driver) PowerOn(ctx context.Context, spec driver.Spec) error {
	const op = driver.ActionStart
	vm, err := d.existing(ctx, op, spec)
	if err != nil {
		return err
	}
	if paused(vm.State) {
		return d.simple(ctx, op, opResume, vm)
	}
	s, err := status(op, vm)
	if err != nil {
		if vm.State == "Starting" {
			return nil
		}
		return err
	}
	if s == driver.StatusRunning {
		return nil
	}
	return d.simple(ctx, op, opStart, vm)
}
