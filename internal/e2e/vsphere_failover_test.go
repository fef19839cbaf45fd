package e2e

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferrydr/ferry/agent/driver/vsphere"
	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/internal/vcsim"
)

// vsphereSite is a recovery site whose target drives govmomi's vCenter
// simulator, served by the test process on loopback; the target agent is
// its own process and reaches it over HTTPS like a real vCenter. The target
// directory is the simulator's NFS datastore.
type vsphereSite struct {
	vc  *vcsim.Sim
	c   *Controller
	dir string
}

// vsphereTargetFlags are `targets add` flags of a target on the simulator.
func vsphereTargetFlags(vc *vcsim.Sim) []string {
	return []string{"--driver", "vsphere", "--url", vc.URL, "--datacenter", vcsim.Datacenter,
		"--datastore", vcsim.NFSName, "--pool", vcsim.Pool, "--credentials-file", vc.CredFile, "--insecure"}
}

func newVSphereSite(t *testing.T) *vsphereSite {
	t.Helper()
	s := &vsphereSite{vc: vcsim.Start(t, vcsim.Config{})}
	s.dir = s.vc.Mount
	s.c = StartController(t)
	EnrollAgent(t, s.c, s.c.Addr, "src")
	EnrollAgent(t, s.c, s.c.Addr, "dr-agent")
	s.c.MustFerry(append(append([]string{"targets", "add", "vs", "--agent", "dr-agent", "--dir", s.dir}, vsphereTargetFlags(s.vc)...),
		"--network", "lan="+vcsim.ProdNet, "--network", "dmz="+vcsim.DMZNet, "--test-network", vcsim.TestNet,
		"--scsi-controller", "pvscsi", "--nic-model", "vmxnet3")...)
	s.c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	return s
}

func (s *vsphereSite) files(t *testing.T) []string {
	t.Helper()
	return (&Site{Dir: s.dir}).Files(t)
}

// requireVM checks a VM as the vSphere API reports it: powered on, CPUs,
// memory, the port groups of its NICs in order (vmxnet3 cards, connected
// at power on), exactly one disk on a pvscsi controller (the target's
// --scsi-controller and --nic-model), the flat descriptor next to raw.
func (s *vsphereSite) requireVM(t *testing.T, name, raw string, cpus, memMB int32, nets ...string) {
	t.Helper()
	m := s.vc.VM(t, name)
	require.NotNil(t, m, "VM %s is registered", name)
	require.Equal(t, types.VirtualMachinePowerStatePoweredOn, m.Runtime.PowerState)
	require.Equal(t, cpus, m.Config.Hardware.NumCPU)
	require.Equal(t, memMB, m.Config.Hardware.MemoryMB)
	rel, err := filepath.Rel(s.dir, vsphere.DescriptorPath(raw))
	require.NoError(t, err)
	require.Equal(t, []string{"[" + vcsim.NFSName + "] " + filepath.ToSlash(rel)}, vcsim.Disks(m), "the disk is the flat descriptor of %s", raw)
	var got []string
	for _, dev := range m.Config.Hardware.Device {
		if card, ok := dev.(types.BaseVirtualEthernetCard); ok {
			require.IsType(t, &types.VirtualVmxnet3{}, dev, "--nic-model vmxnet3")
			c := card.GetVirtualEthernetCard()
			require.True(t, c.Connectable.StartConnected, "NIC on %s connects at power on", s.vc.NetworkName(t, c))
			got = append(got, s.vc.NetworkName(t, c))
		}
		if _, ok := dev.(types.BaseVirtualSCSIController); ok {
			require.IsType(t, &types.ParaVirtualSCSIController{}, dev, "--scsi-controller pvscsi")
		}
	}
	require.Equal(t, nets, got)

	fi, err := os.Stat(raw)
	require.NoError(t, err)
	d, err := os.ReadFile(vsphere.DescriptorPath(raw))
	require.NoError(t, err)
	require.Contains(t, string(d), fmt.Sprintf("RW %d VMFS %q\n", fi.Size()/512, filepath.Base(raw)),
		"the descriptor's one extent is the raw file itself, whole")
}

func sha256File(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return sha256.Sum256(b)
}

// TestFailoverVSphere: a machine protected to a vsphere target (vcsim) is
// failed over through Ferry's jobs. A test failover registers and powers on
// vm-test with 2 CPUs and 64 MiB from the hardware description, both NICs
// on the test port group, its disk the flat descriptor of the test clone;
// cleanup unregisters it and leaves no file behind. A failover then powers
// on vm with each NIC on the port group the network map names (a standard
// and a distributed one) and its disk the descriptor of the failed-over
// (live) raw file, whose bytes hash like the test's own copy of the source.
// The target's --scsi-controller and --nic-model reach the VM.
func TestFailoverVSphere(t *testing.T) {
	s := newVSphereSite(t)
	img := filepath.Join(testenv.MountLoop(t, "xfs", 1<<30), "vm.img")
	want := sha256.Sum256(makeImage(t, img, 21, 8<<20))
	s.c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", "vs",
		"--cpus", "2", "--memory", "64MiB", "--nic", "lan", "--nic", "dmz")
	p := s.c.WaitPoint("vm", 0, 2*time.Minute)
	(&Site{Dir: s.dir}).waitStaged(t, "vm", p.ID)
	vms := s.vc.VMNames(t)
	files := s.files(t)

	j := s.c.runJob(t, 0, "failover", "vm", "--test")
	clone := filepath.Join(s.dir, "vm", "test-"+j.ID, "d.raw")
	s.requireVM(t, "vm-test", clone, 2, 64, vcsim.TestNet, vcsim.TestNet)
	require.Nil(t, s.vc.VM(t, "vm"), "a test failover does not touch the production name")
	require.Equal(t, want, sha256File(t, clone), "the test clone holds the source's bytes")

	s.c.runJob(t, 0, "cleanup", "vm")
	require.Nil(t, s.vc.VM(t, "vm-test"), "cleanup unregisters the test VM")
	require.ElementsMatch(t, vms, s.vc.VMNames(t), "cleanup leaves the inventory as it was")
	require.ElementsMatch(t, files, s.files(t), "cleanup leaves no file")

	s.c.runJob(t, 0, "failover", "vm")
	live := filepath.Join(s.dir, "vm", "live", "d.raw")
	s.requireVM(t, "vm", live, 2, 64, vcsim.ProdNet, vcsim.DMZNet)
	require.Equal(t, want, sha256File(t, live), "the failed-over disk holds the source's bytes")
}
