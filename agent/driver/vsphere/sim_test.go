package vsphere

import (
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferrydr/ferry/internal/vcsim"
)

// Names in govmomi's VPX simulator model and the ones the tests add.
const (
	simUser     = vcsim.User
	simPool     = vcsim.Pool
	simProdNet  = vcsim.ProdNet
	simTestNet  = vcsim.TestNet
	simNFSName  = vcsim.NFSName
	simLocalDS  = vcsim.LocalDS
	simPassword = vcsim.Password
)

// sim is an in-process vCenter (internal/vcsim) and the driver options
// that reach it.
type sim struct {
	*vcsim.Sim
	model *simulator.Model
	srv   *simulator.Server
	c     *govmomi.Client
	mount string
	opts  map[string]string
}

func newSim(t *testing.T, vmfs bool) *sim {
	t.Helper()
	s := vcsim.Start(t, vcsim.Config{VMFS: vmfs})
	return &sim{Sim: s, model: s.Model, srv: s.Server, c: s.Client, mount: s.Mount, opts: map[string]string{
		OptURL: s.URL, OptCredentialsFile: s.CredFile, OptDatacenter: vcsim.Datacenter, OptDatastore: simNFSName,
		OptMount: s.Mount, OptPool: simPool, OptInsecure: "true", OptTestNetwork: simTestNet,
	}}
}

// vm reads a VM back through the API, by name; nil when absent.
func (s *sim) vm(t *testing.T, name string) *mo.VirtualMachine { return s.VM(t, name) }

// networkName is the port group name behind a NIC's backing.
func (s *sim) networkName(t *testing.T, card *types.VirtualEthernetCard) string {
	return s.NetworkName(t, card)
}
