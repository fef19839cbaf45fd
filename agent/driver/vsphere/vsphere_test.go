package vsphere

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferrydr/ferry/agent/driver"
)

// stage writes a raw disk of size bytes of random data under the mount, as
// the target agent stages a set, and returns its path and bytes.
func stage(t *testing.T, s *sim, rel string, size int) (string, []byte) {
	t.Helper()
	p := filepath.Join(s.mount, filepath.FromSlash(rel))
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	b := make([]byte, size)
	_, _ = rand.Read(b)
	require.NoError(t, os.WriteFile(p, b, 0o644))
	return p, b
}

func newDriver(t *testing.T, opts map[string]string) *Driver {
	t.Helper()
	d, err := New(opts)
	require.NoError(t, err)
	return d
}

func disksOf(m *vmInfo) (files []string) {
	for _, dev := range m.devices {
		if d, ok := dev.(*types.VirtualDisk); ok {
			files = append(files, d.Backing.(types.BaseVirtualDeviceFileBackingInfo).GetVirtualDeviceFileBackingInfo().FileName)
		}
	}
	return files
}

type vmInfo struct {
	cpus     int32
	memoryMB int32
	firmware string
	power    types.VirtualMachinePowerState
	vmx      string
	devices  []types.BaseVirtualDevice
	cards    []*types.VirtualEthernetCard
	guestIPs []string
}

func readVM(t *testing.T, s *sim, name string) *vmInfo {
	t.Helper()
	m := s.vm(t, name)
	if m == nil {
		return nil
	}
	v := &vmInfo{cpus: m.Config.Hardware.NumCPU, memoryMB: m.Config.Hardware.MemoryMB, firmware: m.Config.Firmware,
		power: m.Runtime.PowerState, vmx: m.Config.Files.VmPathName, devices: m.Config.Hardware.Device}
	for _, dev := range v.devices {
		if c, ok := dev.(types.BaseVirtualEthernetCard); ok {
			v.cards = append(v.cards, c.GetVirtualEthernetCard())
		}
	}
	if m.Guest != nil {
		for _, n := range m.Guest.Net {
			v.guestIPs = append(v.guestIPs, n.IpAddress...)
		}
	}
	return v
}

// TestFailoverSequence: Start registers and powers on a VM with the spec's
// CPUs, memory and firmware, its NIC on the mapped port group with the kept
// MAC and the flat descriptors as its disks (all read back through the
// API); Status follows; a second Start is a no-op; Stop then Start with
// more CPUs reconfigures without duplicating disks; Remove unregisters the
// VM, deletes its vmx directory and keeps the disks bit for bit.
func TestFailoverSequence(t *testing.T) {
	s := newSim(t, false)
	ctx := context.Background()
	d := newDriver(t, s.opts)
	raw0, want0 := stage(t, s, "site/web1/set-1/disk0.raw", 8<<20)
	raw1, want1 := stage(t, s, "site/web1/set-1/disk1.raw", 2<<20)
	spec := driver.Spec{
		Name: "web1", Machine: "web1", CPUs: 2, Memory: 1536 << 20, Firmware: "uefi",
		NICs:  []driver.NIC{{Name: "prod", Network: simProdNet, MAC: "00:50:56:01:02:03"}},
		Disks: []driver.Disk{{Name: "disk0", Path: raw0, Format: "raw"}, {Name: "disk1", Path: raw1, Format: "raw"}},
	}
	st, err := d.Status(ctx, spec)
	require.NoError(t, err)
	require.Equal(t, driver.StatusAbsent, st)

	require.NoError(t, d.Start(ctx, spec))
	v := readVM(t, s, "web1")
	require.NotNil(t, v, "Start must create the VM")
	require.Equal(t, types.VirtualMachinePowerStatePoweredOn, v.power)
	require.EqualValues(t, 2, v.cpus)
	require.EqualValues(t, 1536, v.memoryMB)
	require.Equal(t, "efi", v.firmware)
	require.Equal(t, "["+simNFSName+"] ferry-vms/web1/web1.vmx", v.vmx)
	require.Equal(t, []string{
		"[" + simNFSName + "] site/web1/set-1/disk0-esxi.vmdk",
		"[" + simNFSName + "] site/web1/set-1/disk1-esxi.vmdk",
	}, disksOf(v))
	require.Len(t, v.cards, 1)
	require.Equal(t, simProdNet, s.networkName(t, v.cards[0]))
	require.Equal(t, "00:50:56:01:02:03", v.cards[0].MacAddress)
	require.Equal(t, string(types.VirtualEthernetCardMacTypeManual), v.cards[0].AddressType)
	require.True(t, v.cards[0].Connectable.StartConnected)
	for _, raw := range []string{raw0, raw1} {
		text, err := os.ReadFile(DescriptorPath(raw))
		require.NoError(t, err)
		require.Contains(t, string(text), `VMFS "`+filepath.Base(raw)+`"`)
	}

	st, err = d.Status(ctx, spec)
	require.NoError(t, err)
	require.Equal(t, driver.StatusRunning, st)
	require.NoError(t, d.Start(ctx, spec), "Start of a running VM succeeds")

	require.NoError(t, d.Stop(ctx, spec))
	st, err = d.Status(ctx, spec)
	require.NoError(t, err)
	require.Equal(t, driver.StatusStopped, st)
	require.NoError(t, d.Stop(ctx, spec), "Stop of a stopped VM succeeds")

	spec.CPUs = 4
	require.NoError(t, d.Start(ctx, spec))
	v = readVM(t, s, "web1")
	require.EqualValues(t, 4, v.cpus, "a later Start reconfigures the VM")
	require.Len(t, disksOf(v), 2, "a later Start does not attach the disks twice")
	require.Len(t, v.cards, 1)

	require.NoError(t, d.Remove(ctx, spec))
	require.Nil(t, readVM(t, s, "web1"), "Remove unregisters the VM")
	st, err = d.Status(ctx, spec)
	require.NoError(t, err)
	require.Equal(t, driver.StatusAbsent, st)
	require.NoDirExists(t, filepath.Join(s.mount, "ferry-vms", "web1"))
	for raw, want := range map[string][]byte{raw0: want0, raw1: want1} {
		got, err := os.ReadFile(raw)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "%s must be kept as staged", raw)
	}
	require.NoError(t, d.Remove(ctx, spec), "Remove of an absent VM succeeds")

	err = d.Stop(ctx, spec)
	require.Equal(t, driver.KindNotFound, driver.KindOf(err), "%v", err)
}

// TestTestFailoverIsolatedAndReIP: a test machine is named MACHINE-test, its
// NIC joins the test network (or is disconnected without one), and an
// address mapping reaches the guest through customization.
func TestTestFailoverIsolatedAndReIP(t *testing.T) {
	s := newSim(t, false)
	ctx := context.Background()
	raw, _ := stage(t, s, "site/db1/.clone-1/disk0.raw", 4<<20)
	spec := driver.Spec{
		Machine: "db1", Test: true, CPUs: 1, Memory: 512 << 20,
		NICs:  []driver.NIC{{Name: "prod", Network: simProdNet, MAC: "00:50:56:0a:0b:0c", Address: "10.9.8.7/24", Gateway: "10.9.8.1"}},
		Disks: []driver.Disk{{Name: "disk0", Path: raw}},
	}
	d := newDriver(t, s.opts)
	require.NoError(t, d.Start(ctx, spec))
	require.Nil(t, readVM(t, s, "db1"), "a test never creates the production name")
	v := readVM(t, s, "db1-test")
	require.NotNil(t, v)
	require.Equal(t, simTestNet, s.networkName(t, v.cards[0]))
	require.Contains(t, v.guestIPs, "10.9.8.7", "the customization's address reaches the guest")
	require.NoError(t, d.Remove(ctx, spec))
	require.Nil(t, readVM(t, s, "db1-test"))

	// Without a test network the NIC stays on its port group, never
	// connected. Without a mount option the datastore is the target
	// directory the request names.
	opts := clone(s.opts)
	delete(opts, OptTestNetwork)
	delete(opts, OptMount)
	spec.NICs[0].Address, spec.NICs[0].Gateway = "", ""
	d = newDriver(t, opts)
	err := d.Start(ctx, spec)
	require.ErrorIs(t, err, ErrOption, "no mount and no target directory")
	spec.Env = map[string]string{"FERRY_DIR": s.mount}
	require.NoError(t, d.Start(ctx, spec))
	v = readVM(t, s, "db1-test")
	require.False(t, v.cards[0].Connectable.StartConnected)
	require.False(t, v.cards[0].Connectable.Connected)
	require.False(t, v.cards[0].Connectable.AllowGuestControl)
	require.NoError(t, d.Remove(ctx, spec))
	require.NoDirExists(t, filepath.Join(s.mount, DefaultVMDir, "db1-test"))

	spec.Name = "db1"
	err = d.Start(ctx, spec)
	require.Equal(t, driver.KindInvalid, driver.KindOf(err), "%v", err)
	require.ErrorIs(t, err, ErrTestNetwork)
}

// TestClassifiedErrors: a refused login is auth, a missing datastore is
// not found, a VMFS datastore is refused as invalid with the reason, a
// hosted VMDK disk is refused, an unreachable vCenter is transient.
func TestClassifiedErrors(t *testing.T) {
	s := newSim(t, true)
	ctx := context.Background()
	raw, _ := stage(t, s, "site/app/set/disk0.raw", 1<<20)
	spec := driver.Spec{Machine: "app", CPUs: 1, Memory: 256 << 20, Disks: []driver.Disk{{Name: "d", Path: raw}}}

	bad := filepath.Join(t.TempDir(), "bad.cred")
	require.NoError(t, os.WriteFile(bad, []byte("user="+simUser+"\npassword=wrong\n"), 0o600))
	opts := clone(s.opts)
	opts[OptCredentialsFile] = bad
	err := newDriver(t, opts).Start(ctx, spec)
	require.Equal(t, driver.KindAuth, driver.KindOf(err), "%v", err)
	require.True(t, fault.Is(err, &types.InvalidLogin{}), "%v", err)
	require.Error(t, Validate(ctx, opts))

	opts = clone(s.opts)
	opts[OptDatastore] = "no-such-datastore"
	err = newDriver(t, opts).Start(ctx, spec)
	require.Equal(t, driver.KindNotFound, driver.KindOf(err), "%v", err)
	require.Contains(t, err.Error(), "no-such-datastore")

	opts = clone(s.opts)
	opts[OptDatastore] = simLocalDS
	err = newDriver(t, opts).Start(ctx, spec)
	require.Equal(t, driver.KindInvalid, driver.KindOf(err), "%v", err)
	require.ErrorIs(t, err, ErrNotNFS)
	require.Contains(t, err.Error(), "is VMFS")
	require.ErrorIs(t, Validate(ctx, opts), ErrNotNFS)

	spec.Disks[0].Format = "vmdk"
	err = newDriver(t, s.opts).Start(ctx, spec)
	require.Equal(t, driver.KindInvalid, driver.KindOf(err), "%v", err)
	require.ErrorIs(t, err, ErrDisk)
	spec.Disks[0].Format = "raw"

	outside := filepath.Join(t.TempDir(), "disk0.raw")
	require.NoError(t, os.WriteFile(outside, make([]byte, 4096), 0o644))
	err = newDriver(t, s.opts).Start(ctx, driver.Spec{Machine: "app", CPUs: 1, Memory: 256 << 20,
		Disks: []driver.Disk{{Name: "d", Path: outside}}})
	require.Equal(t, driver.KindInvalid, driver.KindOf(err), "%v", err)
	require.ErrorIs(t, err, ErrNotUnder)
	require.NoFileExists(t, DescriptorPath(outside), "nothing written outside the datastore")

	opts = clone(s.opts)
	opts[OptURL] = "https://127.0.0.1:1/sdk" // nothing listens on port 1
	err = newDriver(t, opts).Start(ctx, spec)
	require.Equal(t, driver.KindTransient, driver.KindOf(err), "%v", err)
	var de *driver.Error
	require.True(t, errors.As(err, &de) && de.Retryable())
}

// TestValidate: good options pass (the mount probe finds its file through
// vCenter); bad options are refused before anything is created.
func TestValidate(t *testing.T) {
	s := newSim(t, false)
	ctx := context.Background()
	require.NoError(t, Validate(ctx, s.opts))
	o := clone(s.opts)
	o[OptNetworks] = simProdNet + "," + simTestNet
	require.NoError(t, Validate(ctx, o), "existing port groups of the network map")

	other := t.TempDir()
	cases := map[string]func(map[string]string){
		"missing url":         func(o map[string]string) { delete(o, OptURL) },
		"url with password":   func(o map[string]string) { o[OptURL] = "https://u:p@vc.example/sdk" },
		"password option":     func(o map[string]string) { o["password"] = "x" },
		"unknown option":      func(o map[string]string) { o["datastor"] = "x" },
		"relative mount":      func(o map[string]string) { o[OptMount] = "mnt/nfs" },
		"bad insecure":        func(o map[string]string) { o[OptInsecure] = "maybe" },
		"bad controller":      func(o map[string]string) { o[OptController] = "buslogic" },
		"bad timeout":         func(o map[string]string) { o[OptShutdownTimeout] = "-1s" },
		"no credentials":      func(o map[string]string) { delete(o, OptCredentialsFile) },
		"mount not the ds":    func(o map[string]string) { o[OptMount] = other },
		"no such pool":        func(o map[string]string) { o[OptPool] = "/DC0/host/DC0_C0/Resources/nope" },
		"no such test net":    func(o map[string]string) { o[OptTestNetwork] = "nope" },
		"unmapped port group": func(o map[string]string) { o[OptNetworks] = simProdNet + ",nope" },
		"no such datacenter":  func(o map[string]string) { o[OptDatacenter] = "DC9" },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			o := clone(s.opts)
			mutate(o)
			err := Validate(ctx, o)
			require.Error(t, err)
			k := driver.KindOf(err)
			require.True(t, k == driver.KindInvalid || k == driver.KindNotFound, "%s: %v", k, err)
		})
	}

	// Verified TLS: the simulator's certificate as the CA file passes; the
	// system roots (no insecure, no ca-file) do not know it.
	caFile, err := s.srv.CertificateFile()
	require.NoError(t, err)
	o = clone(s.opts)
	delete(o, OptInsecure)
	o[OptCAFile] = caFile
	require.NoError(t, Validate(ctx, o), "vCenter's certificate verified against ca-file")
	delete(o, OptCAFile)
	err = Validate(ctx, o)
	require.Equal(t, driver.KindInvalid, driver.KindOf(err), "an unknown certificate is refused, not retried: %v", err)

	loose := filepath.Join(t.TempDir(), "loose.cred")
	require.NoError(t, os.WriteFile(loose, []byte("user=a\npassword=b\n"), 0o644))
	o = clone(s.opts)
	o[OptCredentialsFile] = loose
	err = Validate(ctx, o)
	require.ErrorIs(t, err, ErrOption)
	require.Contains(t, err.Error(), "chmod 600")
}

func clone(m map[string]string) map[string]string {
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// TestRegisterFromVMX: a VM that left the inventory but whose vmx is still
// in its directory (unregistered by hand, a vCenter rebuilt) is registered
// from that vmx, not created again, and brought to the spec.
func TestRegisterFromVMX(t *testing.T) {
	s := newSim(t, false)
	ctx := context.Background()
	raw, _ := stage(t, s, "site/web2/set/disk0.raw", 1<<20)
	spec := driver.Spec{Machine: "web2", Name: "web2", CPUs: 2, Memory: 512 << 20, Disks: []driver.Disk{{Name: "d", Path: raw}},
		NICs: []driver.NIC{{Name: "prod", Network: simProdNet}}}
	d := newDriver(t, s.opts)
	require.NoError(t, d.Start(ctx, spec))
	require.NoError(t, d.Stop(ctx, spec))

	vm, err := find.NewFinder(s.c.Client, true).VirtualMachine(ctx, "/DC0/vm/web2")
	require.NoError(t, err)
	require.NoError(t, vm.Unregister(ctx))
	require.Nil(t, readVM(t, s, "web2"))
	vmx := filepath.Join(s.mount, DefaultVMDir, "web2", "web2.vmx")
	require.FileExists(t, vmx, "the vmx stays when a VM is unregistered")

	var logs bytes.Buffer
	d.Log = slog.New(slog.NewTextHandler(&logs, nil))
	spec.CPUs = 3
	require.NoError(t, d.Start(ctx, spec))
	require.Contains(t, logs.String(), "registering the VM from its directory")
	v := readVM(t, s, "web2")
	require.NotNil(t, v)
	require.Equal(t, "["+simNFSName+"] ferry-vms/web2/web2.vmx", v.vmx)
	require.Equal(t, types.VirtualMachinePowerStatePoweredOn, v.power)
	require.EqualValues(t, 3, v.cpus)
	require.Equal(t, []string{"[" + simNFSName + "] site/web2/set/disk0-esxi.vmdk"}, disksOf(v))
	require.Len(t, v.cards, 1)
	require.NoError(t, d.Remove(ctx, spec))
}
