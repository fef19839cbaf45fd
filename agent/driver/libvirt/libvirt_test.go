//go:build linux

package libvirt_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirtxml"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/agent/driver/libvirt"
	"github.com/ferrydr/ferry/internal/libvirtd"
	"github.com/ferrydr/ferry/protocol/msg"
)

// rawDisk writes a small empty raw disk the guest can be started on.
func rawDisk(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, nil, 0o600))
	require.NoError(t, os.Truncate(p, 4<<20))
	return p
}

func newDriver(t *testing.T, d *libvirtd.Daemon, extra map[string]string) *libvirt.Driver {
	t.Helper()
	opts := map[string]string{libvirt.OptURI: d.URI, libvirt.OptShutdownTimeout: "1s"}
	for k, v := range extra {
		opts[k] = v
	}
	drv, err := libvirt.New(opts)
	require.NoError(t, err)
	return drv
}

// domainXML reads a domain's live definition through the API.
func domainXML(t *testing.T, l *golibvirt.Libvirt, name string) libvirtxml.Domain {
	t.Helper()
	dom, err := l.DomainLookupByName(name)
	require.NoError(t, err)
	x, err := l.DomainGetXMLDesc(dom, 0)
	require.NoError(t, err)
	var dx libvirtxml.Domain
	require.NoError(t, dx.Unmarshal(x))
	return dx
}

func state(t *testing.T, l *golibvirt.Libvirt, name string) golibvirt.DomainState {
	t.Helper()
	dom, err := l.DomainLookupByName(name)
	require.NoError(t, err)
	st, _, err := l.DomainGetState(dom, 0)
	require.NoError(t, err)
	return golibvirt.DomainState(st)
}

func diskSources(dx libvirtxml.Domain, device string) []string {
	var out []string
	for _, dk := range dx.Devices.Disks {
		if dk.Device == device && dk.Source != nil && dk.Source.File != nil {
			out = append(out, dk.Source.File.File)
		}
	}
	return out
}

// TestLibvirtLifecycle drives a real libvirtd + qemu (TCG): start defines a
// domain on exactly the spec's disk files and reaches running; a second start
// is a no-op; pause/resume change libvirt's state; stop of a guest that
// ignores ACPI destroys it after the shutdown timeout; remove undefines it
// and leaves the disks.
func TestLibvirtLifecycle(t *testing.T) {
	d := libvirtd.Start(t)
	l := d.Connect(t)
	dir := t.TempDir()
	disks := []driver.Disk{
		{Name: "sda", Path: rawDisk(t, dir, "sda.raw"), Format: "raw"},
		{Name: "sdb", Path: rawDisk(t, dir, "sdb.raw")},
	}
	spec := driver.Spec{Name: "web1", Machine: "web1", CPUs: 2, Memory: 64 << 20, Disks: disks}
	drv := newDriver(t, d, nil)
	ctx := context.Background()

	st, err := drv.Status(ctx, spec)
	require.NoError(t, err)
	require.Equal(t, driver.StatusAbsent, st)

	require.NoError(t, drv.Start(ctx, spec))
	require.Equal(t, golibvirt.DomainRunning, state(t, l, "web1"))
	dx := domainXML(t, l, "web1")
	require.Equal(t, "qemu", dx.Type)
	require.Equal(t, []string{disks[0].Path, disks[1].Path}, diskSources(dx, "disk"))
	require.Equal(t, uint(2), dx.VCPU.Value)
	require.Empty(t, dx.Devices.Interfaces)
	st, err = drv.Status(ctx, spec)
	require.NoError(t, err)
	require.Equal(t, driver.StatusRunning, st)
	require.NoError(t, drv.Start(ctx, spec), "start of a running domain")

	require.NoError(t, drv.Pause(ctx, spec))
	require.Equal(t, golibvirt.DomainPaused, state(t, l, "web1"))
	require.NoError(t, drv.Resume(ctx, spec))
	require.Equal(t, golibvirt.DomainRunning, state(t, l, "web1"))

	// The guest runs no OS, so ACPI shutdown is ignored: destroy after 1 s.
	require.NoError(t, drv.Stop(ctx, spec))
	require.Equal(t, golibvirt.DomainShutoff, state(t, l, "web1"))
	st, err = drv.Status(ctx, spec)
	require.NoError(t, err)
	require.Equal(t, driver.StatusStopped, st)
	require.NoError(t, drv.Stop(ctx, spec), "stop of a stopped domain")

	// A spec without disks starts the existing definition as it is (the
	// home site's own domain): the disks stay those of the definition.
	require.NoError(t, drv.Start(ctx, driver.Spec{Name: "web1"}))
	require.Equal(t, golibvirt.DomainRunning, state(t, l, "web1"))
	require.Equal(t, []string{disks[0].Path, disks[1].Path}, diskSources(domainXML(t, l, "web1"), "disk"))
	require.NoError(t, drv.Stop(ctx, spec))

	// A spec with disks redefines a stopped definition (a second failover
	// to the same target): same domain (UUID), the spec's disks.
	uuid := domainXML(t, l, "web1").UUID
	require.NoError(t, drv.Start(ctx, driver.Spec{Name: "web1", Machine: "web1", Memory: 64 << 20, Disks: disks[1:]}))
	require.Equal(t, golibvirt.DomainRunning, state(t, l, "web1"))
	dx = domainXML(t, l, "web1")
	require.Equal(t, uuid, dx.UUID)
	require.Equal(t, []string{disks[1].Path}, diskSources(dx, "disk"))
	require.NoError(t, drv.Stop(ctx, spec))

	require.NoError(t, drv.Remove(ctx, spec))
	_, err = l.DomainLookupByName("web1")
	require.True(t, golibvirt.IsNotFound(err), "domain still defined: %v", err)
	for _, dk := range disks {
		require.FileExists(t, dk.Path, "remove must never delete disks")
	}
	require.NoError(t, drv.Remove(ctx, spec), "remove of an absent domain")
	require.Equal(t, driver.KindNotFound, driver.KindOf(drv.Stop(ctx, spec)))
	require.Equal(t, driver.KindInvalid, driver.KindOf(drv.Start(ctx, driver.Spec{Name: "web1"})), "no definition and no disks")
}

// TestLibvirtStartBadDisk: a domain whose disk does not exist fails the
// start with libvirt's reason (naming the missing file), not a hang.
func TestLibvirtStartBadDisk(t *testing.T) {
	d := libvirtd.Start(t)
	missing := filepath.Join(t.TempDir(), "gone.raw")
	spec := driver.Spec{Machine: "bad1", Memory: 64 << 20, Disks: []driver.Disk{{Name: "sda", Path: missing, Format: "raw"}}}
	err := newDriver(t, d, nil).Start(context.Background(), spec)
	require.Error(t, err)
	var de *driver.Error
	require.ErrorAs(t, err, &de)
	require.Equal(t, driver.ActionStart, de.Op)
	var le golibvirt.Error
	require.ErrorAs(t, err, &le, "libvirt's own error is kept")
	require.Contains(t, err.Error(), missing, "the reason names the disk")
	require.False(t, de.Retryable())
	st, err := newDriver(t, d, nil).Status(context.Background(), spec)
	require.NoError(t, err)
	require.NotEqual(t, driver.StatusRunning, st)
}

// TestLibvirtTestDomainIsolated: a test start gets the -test name, leaves the
// production domain alone, and puts every NIC on the isolated test network
// only — or no NIC at all when the target has no test network.
func TestLibvirtTestDomainIsolated(t *testing.T) {
	d := libvirtd.Start(t)
	d.DefineIsolatedNetwork(t, "prod", "fprod0")
	d.DefineIsolatedNetwork(t, "ferry-test", "ftest0")
	l := d.Connect(t)
	dir := t.TempDir()
	nics := []driver.NIC{{Name: "lan", Network: "prod", MAC: "52:54:00:aa:bb:01"}}
	prod := driver.Spec{Name: "app", Machine: "app", Memory: 64 << 20, NICs: nics,
		Disks: []driver.Disk{{Name: "sda", Path: rawDisk(t, dir, "prod.raw")}}}
	test := prod
	test.Test = true
	test.Disks = []driver.Disk{{Name: "sda", Path: rawDisk(t, dir, "test.raw")}}
	ctx := context.Background()

	require.NoError(t, newDriver(t, d, nil).Start(ctx, prod))
	require.NoError(t, newDriver(t, d, map[string]string{libvirt.OptTestNetwork: "ferry-test"}).Start(ctx, test))
	require.Equal(t, golibvirt.DomainRunning, state(t, l, "app"))
	require.Equal(t, golibvirt.DomainRunning, state(t, l, "app-test"))
	tx := domainXML(t, l, "app-test")
	require.Len(t, tx.Devices.Interfaces, 1)
	require.Equal(t, "ferry-test", tx.Devices.Interfaces[0].Source.Network.Network)
	require.Equal(t, "52:54:00:aa:bb:01", tx.Devices.Interfaces[0].MAC.Address)
	// A test domain logs its serial console beside its disk (a drill
	// reads it), and the firmware writes there too; production does not.
	require.Len(t, tx.Devices.Serials, 1)
	require.NotNil(t, tx.Devices.Serials[0].Log)
	require.Equal(t, filepath.Join(dir, msg.ConsoleLogName), tx.Devices.Serials[0].Log.File)
	require.Equal(t, "yes", tx.OS.BIOS.UseSerial)
	require.Eventually(t, func() bool { _, err := os.Stat(filepath.Join(dir, msg.ConsoleLogName)); return err == nil }, 10*time.Second, 50*time.Millisecond)
	px := domainXML(t, l, "app")
	require.Nil(t, px.Devices.Serials[0].Log)
	require.Equal(t, "prod", px.Devices.Interfaces[0].Source.Network.Network)
	require.Equal(t, []string{prod.Disks[0].Path}, diskSources(px, "disk"))

	require.NoError(t, newDriver(t, d, nil).Remove(ctx, test))
	_, err := l.DomainLookupByName("app-test")
	require.True(t, golibvirt.IsNotFound(err))
	require.Equal(t, golibvirt.DomainRunning, state(t, l, "app"), "test cleanup left production alone")

	// No test network: no NIC at all.
	require.NoError(t, newDriver(t, d, nil).Start(ctx, test))
	require.Empty(t, domainXML(t, l, "app-test").Devices.Interfaces)
	require.NoError(t, newDriver(t, d, nil).Remove(ctx, test))
}

// TestLibvirtReIPSeed: a NIC with an address gets a NoCloud seed (ISO9660,
// label cidata) attached as a read-only cdrom, carrying the address, the
// gateway and the NIC's MAC; remove deletes the seed and nothing else.
func TestLibvirtReIPSeed(t *testing.T) {
	d := libvirtd.Start(t)
	l := d.Connect(t)
	dir := t.TempDir()
	disk := rawDisk(t, dir, "db.raw")
	spec := driver.Spec{Machine: "db", Test: true, Memory: 64 << 20,
		NICs:  []driver.NIC{{Name: "lan", Network: "prod", MAC: "52:54:00:12:34:56", Address: "10.20.30.40/24", Gateway: "10.20.30.1"}},
		Disks: []driver.Disk{{Name: "sda", Path: disk}}}
	drv := newDriver(t, d, nil)
	require.NoError(t, drv.Start(context.Background(), spec))
	require.Equal(t, golibvirt.DomainRunning, state(t, l, "db-test"))
	dx := domainXML(t, l, "db-test")
	seeds := diskSources(dx, "cdrom")
	require.Len(t, seeds, 1, "one NoCloud cdrom in the domain's devices")
	require.Equal(t, filepath.Join(dir, "db-test-cidata.iso"), seeds[0])
	require.Equal(t, []string{disk}, diskSources(dx, "disk"))
	nc, err := libvirt.ReadSeed(seeds[0])
	require.NoError(t, err)
	require.Contains(t, nc.NetworkConfig, `"10.20.30.40/24"`)
	require.Contains(t, nc.NetworkConfig, `via: "10.20.30.1"`)
	require.Contains(t, nc.NetworkConfig, `macaddress: "52:54:00:12:34:56"`)
	require.Contains(t, nc.MetaData, "instance-id: ferry-db-test")

	require.NoError(t, drv.Remove(context.Background(), spec))
	require.NoFileExists(t, seeds[0])
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	// The test machine's console log stays for the drill report that
	// reads it after the cleanup; removing the test set deletes it.
	var left []string
	for _, e := range entries {
		if e.Name() != msg.ConsoleLogName {
			left = append(left, e.Name())
		}
	}
	require.Equal(t, []string{filepath.Base(disk)}, left, "only the disk is left")
}

// TestLibvirtValidate checks options and connectivity the way targets add
// does: a reachable daemon with the mapped networks passes; a missing
// network is not found; a test network that forwards is refused; an absent
// socket is a transient connection failure; a bad option is invalid.
func TestLibvirtValidate(t *testing.T) {
	d := libvirtd.Start(t)
	d.DefineIsolatedNetwork(t, "iso", "fiso0")
	l := d.Connect(t)
	_, err := l.NetworkDefineXML("<network><name>natnet</name><forward mode='nat'/><bridge name='fnat0'/><ip address='192.0.2.1' netmask='255.255.255.0'/></network>")
	require.NoError(t, err)
	ctx := context.Background()
	ok := map[string]string{libvirt.OptURI: d.URI, libvirt.OptNetworks: "iso,bridge:br-x", libvirt.OptTestNetwork: "iso"}
	require.NoError(t, libvirt.Validate(ctx, ok))

	err = libvirt.Validate(ctx, map[string]string{libvirt.OptURI: d.URI, libvirt.OptNetworks: "nosuch"})
	require.Equal(t, driver.KindNotFound, driver.KindOf(err), "%v", err)

	err = libvirt.Validate(ctx, map[string]string{libvirt.OptURI: d.URI, libvirt.OptTestNetwork: "natnet"})
	require.ErrorIs(t, err, libvirt.ErrNotIsolated)
	require.Equal(t, driver.KindInvalid, driver.KindOf(err))

	err = libvirt.Validate(ctx, map[string]string{libvirt.OptURI: "qemu:///system?socket=" + filepath.Join(t.TempDir(), "none")})
	require.Equal(t, driver.KindTransient, driver.KindOf(err), "%v", err)

	err = libvirt.Validate(ctx, map[string]string{libvirt.OptURI: d.URI, "colour": "red"})
	require.Equal(t, driver.KindInvalid, driver.KindOf(err))

	tctx, cancel := context.WithTimeout(ctx, time.Nanosecond)
	defer cancel()
	<-tctx.Done()
	err = libvirt.Validate(tctx, map[string]string{libvirt.OptURI: d.URI})
	require.Equal(t, driver.KindTimeout, driver.KindOf(err))
	require.True(t, errors.Is(err, context.DeadlineExceeded))
}

func TestParseOptions(t *testing.T) {
	o, err := libvirt.ParseOptions(nil)
	require.NoError(t, err)
	require.Equal(t, libvirt.DefaultURI, o.URI.String())
	require.Equal(t, libvirt.DefaultShutdownTimeout, o.ShutdownTimeout)
	require.Equal(t, "qemu", o.VirtType)
	for _, bad := range []map[string]string{
		{"uri": "xen:///system"},
		{"uri": "qemu:///nowhere"},
		{"uri": "qemu+carrier:///system"},
		{"shutdown-timeout": "soon"},
		{"virt-type": "lxc"},
		{"nope": "x"},
	} {
		_, err := libvirt.ParseOptions(bad)
		require.Equal(t, driver.KindInvalid, driver.KindOf(err), "%v", bad)
	}
	o, err = libvirt.ParseOptions(map[string]string{"shutdown-timeout": "90", "networks": "a, b,,bridge:br0"})
	require.NoError(t, err)
	require.Equal(t, 90*time.Second, o.ShutdownTimeout)
	require.Equal(t, []string{"a", "b", "bridge:br0"}, o.Networks)
}

// TestDomainXMLNetworks checks the definition without a daemon: bridge and
// network NICs, MACs kept unless NewMACs (then stable generated ones), an
// unmapped NIC refused, a disk format libvirt cannot take refused.
func TestDomainXMLNetworks(t *testing.T) {
	drv, err := libvirt.New(nil)
	require.NoError(t, err)
	spec := driver.Spec{Machine: "m", Disks: []driver.Disk{{Name: "a", Path: "/d/a.qcow2"}},
		NICs: []driver.NIC{{Name: "lan", Network: "bridge:br0", MAC: "52:54:00:00:00:01"}, {Name: "dmz", Network: "dmznet", MAC: "52:54:00:00:00:02"}}}
	parse := func(x string) libvirtxml.Domain {
		var dx libvirtxml.Domain
		require.NoError(t, dx.Unmarshal(x))
		return dx
	}
	x, err := drv.DomainXML("m", spec, "")
	require.NoError(t, err)
	dx := parse(x)
	require.Equal(t, "qcow2", dx.Devices.Disks[0].Driver.Type)
	require.Equal(t, "br0", dx.Devices.Interfaces[0].Source.Bridge.Bridge)
	require.Equal(t, "dmznet", dx.Devices.Interfaces[1].Source.Network.Network)
	require.Equal(t, "52:54:00:00:00:01", dx.Devices.Interfaces[0].MAC.Address)

	spec.NewMACs = true
	x, err = drv.DomainXML("m", spec, "")
	require.NoError(t, err)
	mac := parse(x).Devices.Interfaces[0].MAC.Address
	require.NotEqual(t, "52:54:00:00:00:01", mac)
	require.True(t, strings.HasPrefix(mac, "52:54:00:"))
	x2, err := drv.DomainXML("m", spec, "")
	require.NoError(t, err)
	require.Equal(t, mac, parse(x2).Devices.Interfaces[0].MAC.Address, "generated MACs are stable")

	spec.NICs[1].Network = ""
	_, err = drv.DomainXML("m", spec, "")
	require.Equal(t, driver.KindInvalid, driver.KindOf(err))
	spec.NICs = nil
	spec.Disks[0].Format = "vhdx"
	_, err = drv.DomainXML("m", spec, "")
	require.Equal(t, driver.KindInvalid, driver.KindOf(err))
}
