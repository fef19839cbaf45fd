package vcsim

import (
	"context"
	"crypto/tls"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Names in govmomi's VPX simulator model and the ones Start adds.
const (
	User       = "ferry"
	Password   = "s3cret pass"
	Datacenter = "DC0"
	Pool       = "/DC0/host/DC0_C0/Resources"
	ProdNet    = "VM Network" // a standard port group of every simulated host
	TestNet    = "DC0_DVPG0"  // the model's distributed port group
	DMZNet     = "ferry-dmz"  // a distributed port group Start adds to the model's switch
	DVS        = "DVS0"
	NFSName    = "ferry-nfs" // vcsim names a NAS datastore after its local path's base name
	LocalDS    = "LocalDS_0" // the model's own datastore (type OTHER; VMFS with Config.VMFS)
	NFSRemote  = "/export/ferry"
)

// Config chooses what the simulator serves.
type Config struct {
	// VMFS makes the model's local datastore report VMFS (vcsim cannot
	// create a VMFS datastore; the type is what the driver reads).
	VMFS bool
}

// Sim is a running simulator with an NFS datastore NFSName whose files are
// the directory Mount: on a real site ESXi mounts the NFS export and so
// does the recovery agent's host; here both are the same directory, which
// is exactly the property the driver relies on.
type Sim struct {
	Model    *simulator.Model
	Server   *simulator.Server
	Client   *govmomi.Client // logged in as User
	Mount    string          // the NFS datastore's directory
	URL      string          // https://127.0.0.1:PORT/sdk, without credentials
	CredFile string          // user= and password= lines, mode 0600
}

// Start serves a simulator until the test ends.
func Start(t testing.TB, cfg Config) *Sim {
	t.Helper()
	ctx := context.Background()
	m := simulator.VPX()
	require.NoError(t, m.Create())
	t.Cleanup(m.Remove)
	if cfg.VMFS {
		ds := m.Map().Any("Datastore").(*simulator.Datastore)
		require.Equal(t, LocalDS, ds.Name)
		ds.Summary.Type = string(types.HostFileSystemVolumeFileSystemTypeVMFS)
	}
	m.Service.Listen = &url.URL{User: url.UserPassword(User, Password)}
	m.Service.TLS = new(tls.Config) // https with the simulator's self-signed certificate
	srv := m.Service.NewServer()
	t.Cleanup(srv.Close)
	require.Equal(t, "https", srv.URL.Scheme)

	c, err := govmomi.NewClient(ctx, srv.URL, true)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Logout(context.Background()) })

	mount := filepath.Join(t.TempDir(), NFSName)
	require.NoError(t, os.Mkdir(mount, 0o755))
	f := finder(t, c)
	hosts, err := f.HostSystemList(ctx, "*")
	require.NoError(t, err)
	require.NotEmpty(t, hosts)
	for _, h := range hosts {
		dss, err := h.ConfigManager().DatastoreSystem(ctx)
		require.NoError(t, err)
		_, err = dss.CreateNasDatastore(ctx, types.HostNasVolumeSpec{
			RemoteHost: "nfs.example", RemotePath: NFSRemote, LocalPath: mount,
			AccessMode: string(types.HostMountModeReadWrite), Type: string(types.HostFileSystemVolumeFileSystemTypeNFS),
		})
		require.NoError(t, err)
	}

	sw, err := f.Network(ctx, DVS)
	require.NoError(t, err)
	dvs, ok := sw.(*object.DistributedVirtualSwitch)
	require.True(t, ok, "%s is a %T", DVS, sw)
	task, err := dvs.AddPortgroup(ctx, []types.DVPortgroupConfigSpec{{Name: DMZNet, Type: string(types.DistributedVirtualPortgroupPortgroupTypeEarlyBinding), NumPorts: 8}})
	require.NoError(t, err)
	require.NoError(t, task.Wait(ctx))

	cred := filepath.Join(t.TempDir(), "vcenter.cred")
	require.NoError(t, os.WriteFile(cred, []byte("user="+User+"\npassword="+Password+"\n"), 0o600))
	u := *srv.URL
	u.User = nil
	return &Sim{Model: m, Server: srv, Client: c, Mount: mount, URL: u.String(), CredFile: cred}
}

func finder(t testing.TB, c *govmomi.Client) *find.Finder {
	t.Helper()
	f := find.NewFinder(c.Client, true)
	dc, err := f.Datacenter(context.Background(), Datacenter)
	require.NoError(t, err)
	f.SetDatacenter(dc)
	return f
}

// VM reads a VM back through the API, by name; nil when there is none.
func (s *Sim) VM(t testing.TB, name string) *mo.VirtualMachine {
	t.Helper()
	ctx := context.Background()
	vm, err := finder(t, s.Client).VirtualMachine(ctx, name)
	var nf *find.NotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	require.NoError(t, err)
	var m mo.VirtualMachine
	require.NoError(t, vm.Properties(ctx, vm.Reference(), []string{"name", "config", "runtime", "guest"}, &m))
	return &m
}

// VMNames lists the datacenter's VMs by name.
func (s *Sim) VMNames(t testing.TB) []string {
	t.Helper()
	vms, err := finder(t, s.Client).VirtualMachineList(context.Background(), "*")
	require.NoError(t, err)
	var out []string
	for _, vm := range vms {
		out = append(out, vm.Name())
	}
	return out
}

// NetworkName is the port group name behind a NIC's backing.
func (s *Sim) NetworkName(t testing.TB, card *types.VirtualEthernetCard) string {
	t.Helper()
	ctx := context.Background()
	switch b := card.Backing.(type) {
	case *types.VirtualEthernetCardNetworkBackingInfo:
		return b.DeviceName
	case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
		pgs, err := finder(t, s.Client).NetworkList(ctx, "*")
		require.NoError(t, err)
		for _, pg := range pgs {
			var m mo.DistributedVirtualPortgroup
			if pg.Reference().Type != "DistributedVirtualPortgroup" {
				continue
			}
			require.NoError(t, s.Client.RetrieveOne(ctx, pg.Reference(), []string{"name", "key"}, &m))
			if m.Key == b.Port.PortgroupKey {
				return m.Name
			}
		}
	}
	t.Fatalf("NIC backing %T names no known port group", card.Backing)
	return ""
}

// Disks are the backing file names of a VM's virtual disks.
func Disks(m *mo.VirtualMachine) []string {
	var out []string
	for _, dev := range m.Config.Hardware.Device {
		if d, ok := dev.(*types.VirtualDisk); ok {
			out = append(out, d.Backing.(types.BaseVirtualDeviceFileBackingInfo).GetVirtualDeviceFileBackingInfo().FileName)
		}
	}
	return out
}

// Cards are a VM's network cards.
func Cards(m *mo.VirtualMachine) []*types.VirtualEthernetCard {
	var out []*types.VirtualEthernetCard
	for _, dev := range m.Config.Hardware.Device {
		if c, ok := dev.(types.BaseVirtualEthernetCard); ok {
			out = append(out, c.GetVirtualEthernetCard())
		}
	}
	return out
}
