package vsphere

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferrydr/ferry/agent/driver"
)

// vmName is the VM's name: spec.Name, or the machine's name (MACHINE-test
// for a test). A test spec never gets the production machine's name.
func vmName(spec driver.Spec) (string, error) {
	name := spec.Name
	if name == "" {
		name = spec.Machine
		if spec.Test {
			name += "-test"
		}
	}
	if name == "" || name == "-test" {
		return "", fmt.Errorf("%w: the machine has no name", ErrOption)
	}
	if spec.Test && name == spec.Machine {
		return "", fmt.Errorf("%w: test machine named %s like the production one", ErrTestNetwork, name)
	}
	if len(name) > 80 || strings.ContainsAny(name, "/\\%[]") {
		return "", fmt.Errorf("%w: %q is not usable as a vSphere VM name (at most 80 characters, no / \\ %% [ ])", ErrOption, name)
	}
	return name, nil
}

// Start writes each disk's descriptor, creates the VM (or registers the vmx
// its directory already holds), brings its CPUs, memory, firmware, disks and
// NICs to the spec, applies re-IP by guest customization and powers it on.
// A running VM is left running, unchanged; a suspended one is resumed as it
// is (vSphere cannot change a suspended VM's hardware).
func (d *Driver) Start(ctx context.Context, spec driver.Spec) error {
	return classify(driver.ActionStart, d.start(ctx, spec))
}

type plannedDisk struct{ dsPath string }

type plannedNIC struct {
	nic     driver.NIC
	network string
	connect bool
}

func (d *Driver) start(ctx context.Context, spec driver.Spec) error {
	name, err := vmName(spec)
	if err != nil {
		return err
	}
	if err := checkSpec(spec); err != nil {
		return err
	}
	custom, err := d.customization(spec)
	if err != nil {
		return err
	}
	mount, err := d.mountFor(spec)
	if err != nil {
		return err
	}
	if first, _, _ := strings.Cut(d.opts.VMDir, "/"); first == spec.Machine {
		return fmt.Errorf("%w: machine %s has the name of the VM directory (vm-dir %s)", ErrOption, spec.Machine, d.opts.VMDir)
	}
	c, err := d.connect(ctx)
	if err != nil {
		return err
	}
	defer c.close()
	c.mount = mount

	vm, err := c.findVM(ctx, name)
	if err != nil {
		return err
	}
	if vm != nil {
		st, err := c.state(ctx, vm)
		if err != nil {
			return err
		}
		switch st.power {
		case types.VirtualMachinePowerStatePoweredOn:
			return nil
		case types.VirtualMachinePowerStateSuspended:
			// Its hardware cannot change while suspended: resume it as it is.
			_, err := c.run(ctx, "power on "+name, vm.PowerOn)
			return err
		}
	}

	disks := make([]plannedDisk, 0, len(spec.Disks))
	for _, dk := range spec.Disks {
		p, err := c.datastorePath(DescriptorPath(dk.Path))
		if err != nil {
			return fmt.Errorf("disk %s: %w", dk.Name, err)
		}
		if _, err := WriteDescriptor(dk.Path); err != nil {
			return fmt.Errorf("disk %s: %w", dk.Name, err)
		}
		disks = append(disks, plannedDisk{dsPath: p})
	}
	nics := make([]plannedNIC, 0, len(spec.NICs))
	backings := map[string]types.BaseVirtualDeviceBackingInfo{}
	for _, n := range spec.NICs {
		pn := plannedNIC{nic: n, network: n.Network, connect: true}
		if spec.Test {
			if d.opts.TestNetwork != "" {
				pn.network = d.opts.TestNetwork
			} else {
				pn.connect = false // on its mapped port group, never connected
			}
		}
		if pn.network == "" {
			return fmt.Errorf("%w: NIC %s has no network at this site (map it with targets add --network)", ErrOption, n.Name)
		}
		if _, ok := backings[pn.network]; !ok {
			net, err := c.finder.Network(ctx, pn.network)
			if err != nil {
				return fmt.Errorf("NIC %s: network %s: %w", n.Name, pn.network, err)
			}
			b, err := net.EthernetCardBackingInfo(ctx)
			if err != nil {
				return fmt.Errorf("NIC %s: network %s: %w", n.Name, pn.network, err)
			}
			backings[pn.network] = b
		}
		nics = append(nics, pn)
	}

	pool, err := c.pool(ctx)
	if err != nil {
		return err
	}
	if vm == nil {
		if vm, err = c.createOrRegister(ctx, name, pool); err != nil {
			return err
		}
	}
	if err := c.reconfigure(ctx, vm, spec, disks, nics, backings); err != nil {
		return err
	}
	if custom != nil {
		st, err := c.state(ctx, vm)
		if err != nil {
			return err
		}
		if st.power == types.VirtualMachinePowerStatePoweredOff && st.pending == "" {
			if _, err := c.run(ctx, "customize "+name, func(ctx context.Context) (*object.Task, error) {
				return vm.Customize(ctx, *custom)
			}); err != nil {
				return err
			}
		}
	}
	_, err = c.run(ctx, "power on "+name, vm.PowerOn)
	return err
}

func checkSpec(spec driver.Spec) error {
	if spec.CPUs <= 0 || spec.CPUs > 768 {
		return fmt.Errorf("%w: %d CPUs", ErrOption, spec.CPUs)
	}
	if spec.Memory < 4<<20 {
		return fmt.Errorf("%w: memory %d bytes is below 4 MiB", ErrOption, spec.Memory)
	}
	if _, err := firmware(spec.Firmware); err != nil {
		return err
	}
	if len(spec.Disks) == 0 {
		return fmt.Errorf("%w: the machine has no disk", ErrOption)
	}
	for _, dk := range spec.Disks {
		if dk.Format != "" && dk.Format != "raw" {
			return fmt.Errorf("%w: disk %s is %s: the vSphere driver runs the staged raw files through a flat descriptor; a hosted %s copy does not power on under ESXi (use the target's raw format)",
				ErrDisk, dk.Name, dk.Format, dk.Format)
		}
	}
	return nil
}

func firmware(f string) (string, error) {
	switch f {
	case "", "bios":
		return string(types.GuestOsDescriptorFirmwareTypeBios), nil
	case "uefi", "efi":
		return string(types.GuestOsDescriptorFirmwareTypeEfi), nil
	}
	return "", fmt.Errorf("%w: firmware %q: want bios or uefi", ErrOption, f)
}

// memoryMB rounds up to the 4 MB multiple vSphere requires.
func memoryMB(b int64) int64 {
	mb := (b + (1<<20 - 1)) >> 20
	return (mb + 3) / 4 * 4
}

func (c *conn) createOrRegister(ctx context.Context, name string, pool *object.ResourcePool) (*object.VirtualMachine, error) {
	folder, err := c.folder(ctx)
	if err != nil {
		return nil, err
	}
	home, local := c.vmHome(name)
	vmx := home + "/" + name + ".vmx"
	var start func(context.Context) (*object.Task, error)
	if _, serr := os.Stat(filepath.Join(local, name+".vmx")); serr == nil {
		c.d.Log.Info("registering the VM from its directory", "vm", name, "vmx", vmx)
		start = func(ctx context.Context) (*object.Task, error) {
			return folder.RegisterVM(ctx, vmx, name, false, pool, nil)
		}
	} else {
		// The VM's directory is made through the mount (vSphere makes only
		// the last level of a path it is given).
		if err := os.MkdirAll(local, 0o755); err != nil {
			return nil, fmt.Errorf("%w: VM directory: %w", ErrOption, err)
		}
		start = func(ctx context.Context) (*object.Task, error) {
			return folder.CreateVM(ctx, types.VirtualMachineConfigSpec{
				Name:    name,
				GuestId: c.d.opts.GuestID,
				Version: fmt.Sprintf("vmx-%d", hardwareVersion),
				Files:   &types.VirtualMachineFileInfo{VmPathName: vmx},
			}, pool, nil)
		}
	}
	res, err := c.run(ctx, "create "+name, start)
	if err != nil {
		return nil, err
	}
	ref, ok := res.(types.ManagedObjectReference)
	if !ok {
		return nil, fmt.Errorf("create %s: task returned %T", name, res)
	}
	return namedVM(c.c, ref, name), nil
}

// reconfigure brings a powered-off VM to the spec: CPUs, memory, firmware,
// one SCSI controller, exactly the spec's disks (attached, never created or
// destroyed) and its NICs in order (edited in place, so generated MACs stay).
func (c *conn) reconfigure(ctx context.Context, vm *object.VirtualMachine, spec driver.Spec,
	disks []plannedDisk, nics []plannedNIC, backings map[string]types.BaseVirtualDeviceBackingInfo) error {
	devs, err := vm.Device(ctx)
	if err != nil {
		return err
	}
	fw, _ := firmware(spec.Firmware)
	cs := types.VirtualMachineConfigSpec{
		NumCPUs:  int32(spec.CPUs),
		MemoryMB: memoryMB(spec.Memory),
		Firmware: fw,
		GuestId:  c.d.opts.GuestID,
	}
	add := func(dev types.BaseVirtualDevice, op types.VirtualDeviceConfigSpecOperation) {
		cs.DeviceChange = append(cs.DeviceChange, &types.VirtualDeviceConfigSpec{Operation: op, Device: dev})
	}

	// The controller: the first SCSI controller of any kind, or a new one.
	var ctrl types.BaseVirtualController
	if sc := devs.SelectByType((*types.VirtualSCSIController)(nil)); len(sc) > 0 {
		ctrl = sc[0].(types.BaseVirtualController)
	} else {
		nc, err := devs.CreateSCSIController(c.d.opts.Controller)
		if err != nil {
			return err
		}
		add(nc, types.VirtualDeviceConfigSpecOperationAdd)
		devs = append(devs, nc)
		ctrl = nc.(types.BaseVirtualController)
	}

	want := map[string]bool{}
	for _, dk := range disks {
		want[dk.dsPath] = true
	}
	have := map[string]bool{}
	for _, dev := range devs.SelectByType((*types.VirtualDisk)(nil)) {
		b, ok := dev.GetVirtualDevice().Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if ok && want[b.GetVirtualDeviceFileBackingInfo().FileName] {
			have[b.GetVirtualDeviceFileBackingInfo().FileName] = true
			continue
		}
		add(dev, types.VirtualDeviceConfigSpecOperationRemove) // no FileOperation: the file stays
	}
	for _, dk := range disks {
		if have[dk.dsPath] {
			continue
		}
		disk := devs.CreateDisk(ctrl, c.ds.Reference(), dk.dsPath)
		add(disk, types.VirtualDeviceConfigSpecOperationAdd)
		devs = append(devs, disk) // so the next disk gets the next unit number
	}

	cards := devs.SelectByType((*types.VirtualEthernetCard)(nil))
	for i, n := range nics {
		conn := &types.VirtualDeviceConnectInfo{StartConnected: n.connect, Connected: n.connect, AllowGuestControl: n.connect}
		if i < len(cards) {
			card := cards[i].(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
			card.Backing = backings[n.network]
			card.Connectable = conn
			if !spec.NewMACs && n.nic.MAC != "" {
				card.AddressType = string(types.VirtualEthernetCardMacTypeManual)
				card.MacAddress = n.nic.MAC
			}
			add(cards[i], types.VirtualDeviceConfigSpecOperationEdit)
			continue
		}
		dev, err := devs.CreateEthernetCard(c.d.opts.NIC, backings[n.network])
		if err != nil {
			return err
		}
		card := dev.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		card.Connectable = conn
		if !spec.NewMACs && n.nic.MAC != "" {
			card.AddressType = string(types.VirtualEthernetCardMacTypeManual)
			card.MacAddress = n.nic.MAC
		} else {
			card.AddressType = string(types.VirtualEthernetCardMacTypeGenerated)
		}
		add(dev, types.VirtualDeviceConfigSpecOperationAdd)
	}
	for _, extra := range cards[min(len(nics), len(cards)):] {
		add(extra, types.VirtualDeviceConfigSpecOperationRemove)
	}
	_, err = c.run(ctx, "reconfigure "+vm.Name(), func(ctx context.Context) (*object.Task, error) {
		return vm.Reconfigure(ctx, cs)
	})
	return err
}

// customization is the guest customization spec that applies the NICs'
// addresses (Linux guests: vSphere's Windows customization runs sysprep,
// which generalises the system; Windows guests use the plan-script recipe
// in docs/drivers.md). nil when no NIC has an address.
func (d *Driver) customization(spec driver.Spec) (*types.CustomizationSpec, error) {
	n := 0
	for _, nic := range spec.NICs {
		if nic.Address != "" {
			n++
		}
	}
	if n == 0 {
		return nil, nil
	}
	if n != len(spec.NICs) {
		return nil, fmt.Errorf("%w: re-IP by guest customization sets every NIC; %d of %d NICs have an address (give --ip for each)", ErrOption, n, len(spec.NICs))
	}
	if strings.HasPrefix(strings.ToLower(d.opts.GuestID), "win") {
		return nil, fmt.Errorf("%w: re-IP of a Windows guest would run sysprep through guest customization; use the plan-script recipe (docs/drivers.md)", ErrOption)
	}
	cs := &types.CustomizationSpec{
		Identity: &types.CustomizationLinuxPrep{
			HostName: &types.CustomizationVirtualMachineName{},
			Domain:   d.opts.GuestDomain,
		},
	}
	for _, nic := range spec.NICs {
		pfx, err := netip.ParsePrefix(nic.Address)
		if err != nil || !pfx.Addr().Is4() {
			return nil, fmt.Errorf("%w: NIC %s address %q: want IPv4 ADDR/PREFIX (IPv6 re-IP: plan-script recipe)", ErrOption, nic.Name, nic.Address)
		}
		ip := types.CustomizationIPSettings{
			Ip:         &types.CustomizationFixedIp{IpAddress: pfx.Addr().String()},
			SubnetMask: prefixMask(pfx.Bits()),
		}
		if nic.Gateway != "" {
			gw, err := netip.ParseAddr(nic.Gateway)
			if err != nil || !gw.Is4() || !pfx.Masked().Contains(gw) {
				return nil, fmt.Errorf("%w: NIC %s gateway %q is not an IPv4 address in %s", ErrOption, nic.Name, nic.Gateway, pfx.Masked())
			}
			ip.Gateway = []string{gw.String()}
		}
		m := types.CustomizationAdapterMapping{Adapter: ip}
		if !spec.NewMACs && nic.MAC != "" {
			m.MacAddress = nic.MAC
		}
		cs.NicSettingMap = append(cs.NicSettingMap, m)
	}
	return cs, nil
}

func prefixMask(bits int) string {
	m := ^uint32(0) << (32 - bits)
	if bits == 0 {
		m = 0
	}
	return fmt.Sprintf("%d.%d.%d.%d", m>>24, m>>16&0xff, m>>8&0xff, m&0xff)
}
