package vsphere

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferrydr/ferry/agent/driver"
)

// Driver is the vSphere hypervisor driver of one target. Each operation
// opens its own vCenter session and logs out at its end.
type Driver struct {
	opts *Options
	// Log receives progress; New sets a discarding logger.
	Log *slog.Logger
}

var _ driver.Hypervisor = (*Driver)(nil)

// New checks a target's options and reads its credentials file; it does
// not contact vCenter (Validate does).
func New(opts map[string]string) (*Driver, error) {
	o, err := ParseOptions(opts)
	if err != nil {
		return nil, classify("options", err)
	}
	return &Driver{opts: o, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, nil
}

// Validate checks the options, logs in, finds the datacenter, the datastore
// (refused unless NFS), the pool, the folder, the test network and the port
// groups the networks option lists (the network map's destinations), and
// checks that the mount option really is that datastore: a probe file
// written under the mount must be visible through vCenter.
func Validate(ctx context.Context, opts map[string]string) error {
	d, err := New(opts)
	if err != nil {
		return err
	}
	c, err := d.connect(ctx)
	if err != nil {
		return classify("validate", err)
	}
	defer c.close()
	if _, err := c.pool(ctx); err != nil {
		return classify("validate", err)
	}
	if _, err := c.folder(ctx); err != nil {
		return classify("validate", err)
	}
	if d.opts.TestNetwork != "" {
		if _, err := c.finder.Network(ctx, d.opts.TestNetwork); err != nil {
			return classify("validate", fmt.Errorf("test-network %s: %w", d.opts.TestNetwork, err))
		}
	}
	for _, n := range d.opts.Networks {
		if _, err := c.finder.Network(ctx, n); err != nil {
			return classify("validate", fmt.Errorf("network %s (network map): %w", n, err))
		}
	}
	if d.opts.Mount == "" {
		return nil // the mount is the target directory, known at each job
	}
	c.mount = d.opts.Mount
	return classify("validate", c.probeMount(ctx))
}

// conn is one logged-in vCenter session bound to the target's datacenter
// and datastore.
type conn struct {
	d      *Driver
	c      *vim25.Client
	sm     *session.Manager
	finder *find.Finder
	dc     *object.Datacenter
	ds     *object.Datastore
	mount  string // the datastore's directory on this host
}

// envDir is the environment key of the target directory in a job's spec.
const envDir = "FERRY_DIR"

// mountFor is where the datastore is mounted: the mount option, else the
// target directory itself (the NFS datastore is the target directory).
func (d *Driver) mountFor(spec driver.Spec) (string, error) {
	if d.opts.Mount != "" {
		return d.opts.Mount, nil
	}
	if dir := spec.Env[envDir]; dir != "" && filepath.IsAbs(dir) {
		return filepath.Clean(dir), nil
	}
	return "", fmt.Errorf("%w: no mount option and no target directory (%s) in the request", ErrOption, envDir)
}

func (d *Driver) connect(ctx context.Context) (*conn, error) {
	sc := soap.NewClient(d.opts.URL, d.opts.Insecure)
	if d.opts.CAFile != "" {
		if err := sc.SetRootCAs(d.opts.CAFile); err != nil {
			return nil, fmt.Errorf("%w: ca-file %s: %w", ErrOption, d.opts.CAFile, err)
		}
	}
	vc, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", d.opts.URL.Host, err)
	}
	sm := session.NewManager(vc)
	if err := sm.Login(ctx, url.UserPassword(d.opts.User, d.opts.Password)); err != nil {
		return nil, fmt.Errorf("log in to %s as %s: %w", d.opts.URL.Host, d.opts.User, err)
	}
	c := &conn{d: d, c: vc, sm: sm, finder: find.NewFinder(vc, true)}
	if d.opts.Datacenter == "" {
		c.dc, err = c.finder.DefaultDatacenter(ctx)
	} else {
		c.dc, err = c.finder.Datacenter(ctx, d.opts.Datacenter)
	}
	if err != nil {
		c.close()
		return nil, fmt.Errorf("datacenter %q: %w", d.opts.Datacenter, err)
	}
	c.finder.SetDatacenter(c.dc)
	if d.opts.Datastore == "" {
		return c, nil // a home site's driver: power only, on VMs wherever they are
	}
	if c.ds, err = c.finder.Datastore(ctx, d.opts.Datastore); err != nil {
		c.close()
		return nil, fmt.Errorf("datastore %s: %w", d.opts.Datastore, err)
	}
	var mds mo.Datastore
	if err := c.ds.Properties(ctx, c.ds.Reference(), []string{"summary"}, &mds); err != nil {
		c.close()
		return nil, fmt.Errorf("datastore %s: %w", d.opts.Datastore, err)
	}
	switch mds.Summary.Type {
	case string(types.HostFileSystemVolumeFileSystemTypeNFS), string(types.HostFileSystemVolumeFileSystemTypeNFS41):
	default:
		c.close()
		return nil, fmt.Errorf("%w: datastore %s is %s; the driver needs an NFS datastore mounted on the agent's host so that ESXi runs the staged raw files in place (docs/drivers.md)",
			ErrNotNFS, d.opts.Datastore, mds.Summary.Type)
	}
	return c, nil
}

func (c *conn) close() {
	ctx, cancel := context.WithTimeout(context.Background(), c.d.opts.TaskTimeout)
	defer cancel()
	_ = c.sm.Logout(ctx)
}

func (c *conn) pool(ctx context.Context) (*object.ResourcePool, error) {
	if c.d.opts.Pool == "" {
		p, err := c.finder.DefaultResourcePool(ctx)
		if err != nil {
			return nil, fmt.Errorf("default resource pool: %w", err)
		}
		return p, nil
	}
	p, err := c.finder.ResourcePool(ctx, c.d.opts.Pool)
	if err != nil {
		return nil, fmt.Errorf("pool %s: %w", c.d.opts.Pool, err)
	}
	return p, nil
}

func (c *conn) folder(ctx context.Context) (*object.Folder, error) {
	if c.d.opts.Folder == "" {
		fs, err := c.dc.Folders(ctx)
		if err != nil {
			return nil, err
		}
		return fs.VmFolder, nil
	}
	f, err := c.finder.Folder(ctx, c.d.opts.Folder)
	if err != nil {
		return nil, fmt.Errorf("folder %s: %w", c.d.opts.Folder, err)
	}
	return f, nil
}

// probeMount writes a file under the mount and asks vCenter for it on the
// datastore: a mount that is another share fails here, not at a failover.
func (c *conn) probeMount(ctx context.Context) error {
	fi, err := os.Stat(c.mount)
	if err != nil {
		return fmt.Errorf("%w: mount: %w", ErrOption, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: mount %s is not a directory", ErrOption, c.mount)
	}
	f, err := os.CreateTemp(c.mount, ".ferry-probe-*")
	if err != nil {
		return fmt.Errorf("%w: mount %s is not writable: %w", ErrOption, c.mount, err)
	}
	name := filepath.Base(f.Name())
	_ = f.Close()
	defer os.Remove(f.Name())
	if _, err := c.ds.Stat(ctx, name); err != nil {
		var nf object.DatastoreNoSuchFileError
		if errors.As(err, &nf) {
			return fmt.Errorf("%w: %s written under mount %s is not on datastore %s: the mount is not that datastore",
				ErrOption, name, c.mount, c.d.opts.Datastore)
		}
		return fmt.Errorf("datastore %s: %w", c.d.opts.Datastore, err)
	}
	return nil
}

// datastorePath maps a file under the mount to "[datastore] rel/path".
func (c *conn) datastorePath(local string) (string, error) {
	rel, err := filepath.Rel(c.mount, filepath.Clean(local))
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return "", fmt.Errorf("%w: %s is not under mount %s of datastore %s", ErrNotUnder, local, c.mount, c.d.opts.Datastore)
	}
	return c.ds.Path(filepath.ToSlash(rel)), nil
}

// vmHome is the VM's own directory (vmx, nvram, logs) on the datastore and
// under the mount.
func (c *conn) vmHome(name string) (dsPath, local string) {
	rel := path.Join(c.d.opts.VMDir, name)
	return c.ds.Path(rel), filepath.Join(c.mount, filepath.FromSlash(rel))
}

// findVM returns the datacenter's VM of that name, nil when there is none.
func (c *conn) findVM(ctx context.Context, name string) (*object.VirtualMachine, error) {
	v, err := view.NewManager(c.c).CreateContainerView(ctx, c.dc.Reference(), []string{"VirtualMachine"}, true)
	if err != nil {
		return nil, err
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	refs, err := v.Find(ctx, []string{"VirtualMachine"}, property.Match{"name": name})
	if err != nil {
		return nil, err
	}
	switch len(refs) {
	case 0:
		return nil, nil
	case 1:
		return namedVM(c.c, refs[0], name), nil
	}
	return nil, fmt.Errorf("%w: %d virtual machines are named %s in datacenter %s", ErrOption, len(refs), name, c.dc.Name())
}

// namedVM is a VM reference whose Name() is name (for messages).
func namedVM(c *vim25.Client, ref types.ManagedObjectReference, name string) *object.VirtualMachine {
	vm := object.NewVirtualMachine(c, ref)
	vm.InventoryPath = name
	return vm
}

func (c *conn) mustFindVM(ctx context.Context, name string) (*object.VirtualMachine, error) {
	vm, err := c.findVM(ctx, name)
	if err == nil && vm == nil {
		err = fmt.Errorf("%w: virtual machine %s in datacenter %s", ErrNotFound, name, c.dc.Name())
	}
	return vm, err
}

// run starts a task and waits for its result, both bounded by the task
// timeout; a task that outlasts it is a timeout.
func (c *conn) run(ctx context.Context, what string, start func(context.Context) (*object.Task, error)) (types.AnyType, error) {
	tctx, cancel := context.WithTimeout(ctx, c.d.opts.TaskTimeout)
	defer cancel()
	t, err := start(tctx)
	var info *types.TaskInfo
	if err == nil {
		info, err = t.WaitForResult(tctx)
	}
	if err != nil {
		if tctx.Err() != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("%s: no result after %s: %w", what, c.d.opts.TaskTimeout, context.DeadlineExceeded)
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return info.Result, nil
}

type vmState struct {
	power   types.VirtualMachinePowerState
	pending string // config.tools.pendingCustomization
}

func (c *conn) state(ctx context.Context, vm *object.VirtualMachine) (vmState, error) {
	var m mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"runtime.powerState", "config.tools"}, &m); err != nil {
		return vmState{}, err
	}
	s := vmState{power: m.Runtime.PowerState}
	if m.Config != nil && m.Config.Tools != nil {
		s.pending = m.Config.Tools.PendingCustomization
	}
	return s, nil
}

// Status reports running (poweredOn), stopped (poweredOff, suspended) or
// absent (no VM of that name).
func (d *Driver) Status(ctx context.Context, spec driver.Spec) (string, error) {
	s, err := d.status(ctx, spec)
	return s, classify(driver.ActionStatus, err)
}

func (d *Driver) status(ctx context.Context, spec driver.Spec) (string, error) {
	status := driver.StatusAbsent
	err := d.withVM(ctx, spec, false, func(c *conn, _ string, vm *object.VirtualMachine) error {
		if vm == nil {
			return nil
		}
		st, err := c.state(ctx, vm)
		if err != nil {
			return err
		}
		status = driver.StatusStopped
		if st.power == types.VirtualMachinePowerStatePoweredOn {
			status = driver.StatusRunning
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return status, nil
}

// withVM names the spec's VM, opens a session, finds the VM (nil when there
// is none, unless must: then that is ErrNotFound) and runs fn on it.
func (d *Driver) withVM(ctx context.Context, spec driver.Spec, must bool, fn func(c *conn, name string, vm *object.VirtualMachine) error) error {
	name, err := vmName(spec)
	if err != nil {
		return err
	}
	c, err := d.connect(ctx)
	if err != nil {
		return err
	}
	defer c.close()
	lookup := c.findVM
	if must {
		lookup = c.mustFindVM
	}
	vm, err := lookup(ctx, name)
	if err != nil {
		return err
	}
	return fn(c, name, vm)
}

// Stop asks the guest to shut down and powers the VM off when it has not
// after the shutdown timeout (or at once when the guest cannot be asked:
// no VMware Tools). A stopped or suspended VM is left as it is.
func (d *Driver) Stop(ctx context.Context, spec driver.Spec) error {
	return classify(driver.ActionStop, d.stop(ctx, spec))
}

func (d *Driver) stop(ctx context.Context, spec driver.Spec) error {
	return d.withVM(ctx, spec, true, func(c *conn, _ string, vm *object.VirtualMachine) error {
		return c.shutdown(ctx, vm)
	})
}

func (c *conn) shutdown(ctx context.Context, vm *object.VirtualMachine) error {
	st, err := c.state(ctx, vm)
	if err != nil || st.power != types.VirtualMachinePowerStatePoweredOn {
		return err
	}
	if err := vm.ShutdownGuest(ctx); err != nil {
		c.d.Log.Info("guest shutdown refused; powering off", "vm", vm.Name(), "err", err)
	} else {
		wctx, cancel := context.WithTimeout(ctx, c.d.opts.ShutdownTimeout)
		err := vm.WaitForPowerState(wctx, types.VirtualMachinePowerStatePoweredOff)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.d.Log.Info("guest did not shut down in time; powering off", "vm", vm.Name(), "timeout", c.d.opts.ShutdownTimeout)
	}
	return c.powerOff(ctx, vm)
}

func (c *conn) powerOff(ctx context.Context, vm *object.VirtualMachine) error {
	_, err := c.run(ctx, "power off "+vm.Name(), vm.PowerOff)
	if err != nil && isPoweredOff(err) {
		return nil // the guest finished shutting down meanwhile
	}
	return err
}

func isPoweredOff(err error) bool { return fault.IsAlreadyPoweredOffError(err) }

// Pause suspends the VM (vSphere has no vCPU pause: the memory is written
// to the VM's directory); Resume powers it on again.
func (d *Driver) Pause(ctx context.Context, spec driver.Spec) error {
	return classify(driver.ActionPause, d.power(ctx, spec, types.VirtualMachinePowerStatePoweredOn, "suspend",
		func(ctx context.Context, vm *object.VirtualMachine) (*object.Task, error) { return vm.Suspend(ctx) }))
}

// Resume powers a suspended VM on.
func (d *Driver) Resume(ctx context.Context, spec driver.Spec) error {
	return classify(driver.ActionResume, d.power(ctx, spec, types.VirtualMachinePowerStateSuspended, "resume",
		func(ctx context.Context, vm *object.VirtualMachine) (*object.Task, error) { return vm.PowerOn(ctx) }))
}

func (d *Driver) power(ctx context.Context, spec driver.Spec, from types.VirtualMachinePowerState, what string,
	op func(context.Context, *object.VirtualMachine) (*object.Task, error)) error {
	return d.withVM(ctx, spec, true, func(c *conn, name string, vm *object.VirtualMachine) error {
		st, err := c.state(ctx, vm)
		if err != nil || st.power != from {
			return err // already in the wanted state (or not in one the action applies to)
		}
		_, err = c.run(ctx, what+" "+name, func(ctx context.Context) (*object.Task, error) { return op(ctx, vm) })
		return err
	})
}

// Remove powers the VM off (no guest shutdown: this is cleanup), unregisters
// it and deletes its own directory under vm-dir when that holds only the
// files vSphere keeps there (vmx, nvram, logs). The disks, which live in the
// target directory, are never deleted. An absent VM is not an error.
func (d *Driver) Remove(ctx context.Context, spec driver.Spec) error {
	return classify("remove", d.remove(ctx, spec))
}

func (d *Driver) remove(ctx context.Context, spec driver.Spec) error {
	return d.withVM(ctx, spec, false, func(c *conn, name string, vm *object.VirtualMachine) error {
		if vm == nil {
			return nil
		}
		return d.removeVM(ctx, c, spec, name, vm)
	})
}

func (d *Driver) removeVM(ctx context.Context, c *conn, spec driver.Spec, name string, vm *object.VirtualMachine) error {
	st, err := c.state(ctx, vm)
	if err != nil {
		return err
	}
	if st.power != types.VirtualMachinePowerStatePoweredOff {
		if err := c.powerOff(ctx, vm); err != nil {
			return err
		}
	}
	if err := vm.Unregister(ctx); err != nil {
		return fmt.Errorf("unregister %s: %w", name, err)
	}
	mount, err := d.mountFor(spec)
	if err != nil {
		d.Log.Info("VM directory left in place: its mount is not known", "vm", name, "err", err)
		return nil
	}
	c.mount = mount
	_, local := c.vmHome(name)
	removeVMHome(local, d.Log)
	return nil
}

// vmHomeFiles are the extensions of files vSphere keeps in a VM's directory
// that Remove may delete: never a disk.
var vmHomeFiles = []string{".vmx", ".vmxf", ".vmsd", ".nvram", ".log", ".vmss", ".vmem", ".hlog", ".lck"}

func removeVMHome(dir string, log *slog.Logger) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		ok := false
		for _, ext := range vmHomeFiles {
			if !e.IsDir() && strings.HasSuffix(e.Name(), ext) {
				ok = true
			}
		}
		if !ok {
			log.Info("VM directory keeps a file that is not vSphere's own; left in place", "dir", dir, "file", e.Name())
			return
		}
	}
	for _, e := range ents {
		_ = os.Remove(filepath.Join(dir, e.Name()))
	}
	_ = os.Remove(dir)
}
