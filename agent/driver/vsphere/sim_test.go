package vsphere

import (
	"context"
	"crypto/tls"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Names in govmomi's VPX simulator model and the ones the tests add.
const (
	simUser      = "ferry"
	simPassword  = "s3cret pass"
	simPool      = "/DC0/host/DC0_C0/Resources"
	simProdNet   = "VM Network" // a standard port group of every simulated host
	simTestNet   = "DC0_DVPG0"  // the model's distributed port group
	simNFSName   = "ferry-nfs"  // vcsim names a NAS datastore after its local path's base name
	simLocalDS   = "LocalDS_0"  // the model's own datastore (type OTHER; marked VMFS by vmfs)
	simNFSRemote = "/export/ferry"
)

// sim is an in-process vCenter (govmomi's vcsim) with an NFS datastore
// whose files are the directory mount: on a real site, ESXi mounts the
// NFS export and so does the recovery agent's host; here both are the
// same directory, which is exactly the property the driver relies on.
type sim struct {
	model *simulator.Model
	srv   *simulator.Server
	c     *govmomi.Client
	mount string
	opts  map[string]string
}

func newSim(t *testing.T, vmfs bool) *sim {
	t.Helper()
	ctx := context.Background()
	m := simulator.VPX()
	require.NoError(t, m.Create())
	t.Cleanup(m.Remove)
	if vmfs {
		// vcsim cannot create a VMFS datastore; its local datastore stands
		// for one by reporting the type a VMFS datastore reports.
		ds := m.Map().Any("Datastore").(*simulator.Datastore)
		require.Equal(t, simLocalDS, ds.Name)
		ds.Summary.Type = string(types.HostFileSystemVolumeFileSystemTypeVMFS)
	}
	m.Service.Listen = &url.URL{User: url.UserPassword(simUser, simPassword)}
	m.Service.TLS = new(tls.Config) // https with the simulator's self-signed certificate
	srv := m.Service.NewServer()
	t.Cleanup(srv.Close)
	require.Equal(t, "https", srv.URL.Scheme)

	c, err := govmomi.NewClient(ctx, srv.URL, true)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Logout(context.Background()) })

	mount := filepath.Join(t.TempDir(), simNFSName)
	require.NoError(t, os.Mkdir(mount, 0o755))
	f := find.NewFinder(c.Client, true)
	dc, err := f.Datacenter(ctx, "DC0")
	require.NoError(t, err)
	f.SetDatacenter(dc)
	hosts, err := f.HostSystemList(ctx, "*")
	require.NoError(t, err)
	require.NotEmpty(t, hosts)
	for _, h := range hosts {
		dss, err := h.ConfigManager().DatastoreSystem(ctx)
		require.NoError(t, err)
		_, err = dss.CreateNasDatastore(ctx, types.HostNasVolumeSpec{
			RemoteHost: "nfs.example", RemotePath: simNFSRemote, LocalPath: mount,
			AccessMode: string(types.HostMountModeReadWrite), Type: string(types.HostFileSystemVolumeFileSystemTypeNFS),
		})
		require.NoError(t, err)
	}

	cred := filepath.Join(t.TempDir(), "vcenter.cred")
	require.NoError(t, os.WriteFile(cred, []byte("user="+simUser+"\npassword="+simPassword+"\n"), 0o600))
	u := *srv.URL
	u.User = nil
	return &sim{model: m, srv: srv, c: c, mount: mount, opts: map[string]string{
		OptURL: u.String(), OptCredentialsFile: cred, OptDatacenter: "DC0", OptDatastore: simNFSName,
		OptMount: mount, OptPool: simPool, OptInsecure: "true", OptTestNetwork: simTestNet,
	}}
}

// vmConfig reads a VM back through the API, by name; nil when absent.
func (s *sim) vm(t *testing.T, name string) *mo.VirtualMachine {
	t.Helper()
	ctx := context.Background()
	f := find.NewFinder(s.c.Client, true)
	dc, err := f.Datacenter(ctx, "DC0")
	require.NoError(t, err)
	f.SetDatacenter(dc)
	vm, err := f.VirtualMachine(ctx, name)
	if _, ok := err.(*find.NotFoundError); ok {
		return nil
	}
	require.NoError(t, err)
	var m mo.VirtualMachine
	require.NoError(t, vm.Properties(ctx, vm.Reference(), []string{"name", "config", "runtime", "guest"}, &m))
	return &m
}

// networkName is the port group name behind a NIC's backing.
func (s *sim) networkName(t *testing.T, card *types.VirtualEthernetCard) string {
	t.Helper()
	ctx := context.Background()
	switch b := card.Backing.(type) {
	case *types.VirtualEthernetCardNetworkBackingInfo:
		return b.DeviceName
	case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
		f := find.NewFinder(s.c.Client, true)
		dc, err := f.Datacenter(ctx, "DC0")
		require.NoError(t, err)
		f.SetDatacenter(dc)
		pgs, err := f.NetworkList(ctx, "*")
		require.NoError(t, err)
		for _, pg := range pgs {
			var m mo.DistributedVirtualPortgroup
			if pg.Reference().Type != "DistributedVirtualPortgroup" {
				continue
			}
			require.NoError(t, s.c.RetrieveOne(ctx, pg.Reference(), []string{"name", "key"}, &m))
			if m.Key == b.Port.PortgroupKey {
				return m.Name
			}
		}
	}
	t.Fatalf("NIC backing %T names no known port group", card.Backing)
	return ""
}
