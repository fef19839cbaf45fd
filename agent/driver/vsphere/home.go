package vsphere

import (
	"context"
	"io"
	"log/slog"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferrydr/ferry/agent/driver"
)

// HomeOptions are the options the driver takes at a machine's home site,
// where it only powers the VM that already exists there: how to reach
// vCenter and how long to wait. Datastore, pool, folder and the options of
// VM creation do not apply.
var HomeOptions = []string{OptURL, OptCredentialsFile, OptDatacenter, OptInsecure, OptCAFile, OptShutdownTimeout, OptTaskTimeout}

// NewHome makes the driver of a machine's home site (options of VM
// creation that a former target's options carry are ignored): Start powers the
// existing VM on (never creates, registers or reconfigures one); Stop asks
// the guest to shut down and powers off after shutdown-timeout; Pause
// suspends and Resume powers a suspended VM on; Status reads its power
// state; Remove is refused. The VM is found by name in the datacenter.
func NewHome(opts map[string]string) (driver.Hypervisor, error) {
	known := make([]string, 0, len(knownOptions))
	for k := range knownOptions {
		known = append(known, k)
	}
	d, err := newHome(driver.HomeOptions(opts, HomeOptions, known))
	if err != nil {
		return nil, err
	}
	return driver.Home{Driver: driverName, D: d}, nil
}

func newHome(opts map[string]string) (*Driver, error) {
	if err := driver.CheckHomeOptions(driverName, opts, HomeOptions); err != nil {
		return nil, err
	}
	o, err := parseOptions(opts, true)
	if err != nil {
		return nil, classify("options", err)
	}
	return &Driver{opts: o, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil
}

// ValidateHome checks a home site's options, logs in to vCenter and finds
// the datacenter.
func ValidateHome(ctx context.Context, opts map[string]string) error {
	d, err := newHome(opts)
	if err != nil {
		return err
	}
	c, err := d.connect(ctx)
	if err != nil {
		return classify("validate", err)
	}
	c.close()
	return nil
}

// PowerOn powers the existing VM on (a suspended one resumes as it is); a
// powered-on VM is left. No VM of that name is KindNotFound.
func (d *Driver) PowerOn(ctx context.Context, spec driver.Spec) error {
	return classify(driver.ActionStart, d.withVM(ctx, spec, true, func(c *conn, name string, vm *object.VirtualMachine) error {
		st, err := c.state(ctx, vm)
		if err != nil || st.power == types.VirtualMachinePowerStatePoweredOn {
			return err
		}
		_, err = c.run(ctx, "power on "+name, vm.PowerOn)
		return err
	}))
}
