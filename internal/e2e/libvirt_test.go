package e2e

import (
	"context"
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
	"github.com/ferrydr/ferry/internal/testenv"
)

// TestTargetsAddLibvirtValidates: `ferry targets add --driver libvirt` is
// checked through the target agent against a real (private) libvirtd before
// anything is stored: a good target with a network map and an isolated test
// network is stored with its options; an unreachable URI, a network that
// does not exist, a test network that forwards, a bad URI, exec commands on
// a libvirt target, foreign options, vhdx disks and network flags on an exec
// target are each refused with the reason, and nothing is stored.
// A machine whose NIC network the target does not map cannot be protected to it.
func TestTargetsAddLibvirtValidates(t *testing.T) {
	d := libvirtd.Start(t)
	d.DefineIsolatedNetwork(t, "dr-lan", "fdrlan0")
	d.DefineIsolatedNetwork(t, "dr-iso", "fdriso0")
	l := d.Connect(t)
	_, err := l.NetworkDefineXML("<network><name>dr-nat</name><forward mode='nat'/><bridge name='fdrnat0'/><ip address='192.0.2.1' netmask='255.255.255.0'/></network>")
	require.NoError(t, err)

	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "dr")
	dir := t.TempDir()
	base := []string{"targets", "add", "kvm", "--agent", "dr", "--dir", dir, "--driver", "libvirt"}
	refused := func(why string, want string, args ...string) {
		t.Helper()
		r := c.Ferry(append(append([]string{}, base...), args...)...)
		require.NotEqual(t, 0, r.Code, "%s: accepted: %s", why, r.Stdout)
		require.Contains(t, r.Stderr, want, "%s", why)
	}
	missing := "qemu:///system?socket=" + filepath.Join(t.TempDir(), "no-sock")
	refused("unreachable libvirtd", "transient", "--uri", missing)
	refused("missing network", "dr-missing", "--uri", d.URI, "--network", "lan=dr-missing")
	refused("test network that forwards", "not isolated", "--uri", d.URI, "--test-network", "dr-nat")
	refused("bad uri", "only qemu:// URIs", "--uri", "xen:///system")
	refused("exec command on libvirt", "exec driver commands", "--uri", d.URI, "--start", "true")
	refused("vhdx disks on libvirt", "raw or qcow2 disks, not vhdx", "--uri", d.URI, "--format", "vhdx")
	refused("vsphere option on libvirt", "--datastore is not an option of the libvirt driver", "--uri", d.URI, "--datastore", "ds1")
	r := c.Ferry("targets", "add", "ex", "--agent", "dr", "--dir", dir, "--start", "true", "--network", "lan=x")
	require.NotEqual(t, 0, r.Code)
	require.Contains(t, r.Stderr, "exec driver does not attach networks")
	var ts []map[string]any
	c.JSON(&ts, "targets", "list")
	require.Empty(t, ts, "a refused target is not stored")

	c.MustFerry(append(base, "--uri", d.URI, "--network", "lan=dr-lan", "--network", "dmz=bridge:br-dmz", "--test-network", "dr-iso", "--new-macs")...)
	var got []struct {
		Name, Driver string
		Options      map[string]string `json:"options"`
		Networks     map[string]string `json:"networks"`
		TestNetwork  string            `json:"test_network"`
		NewMACs      bool              `json:"new_macs"`
	}
	c.JSON(&got, "targets", "list")
	require.Len(t, got, 1)
	require.Equal(t, "libvirt", got[0].Driver)
	require.Equal(t, map[string]string{"uri": d.URI}, got[0].Options)
	require.Equal(t, map[string]string{"lan": "dr-lan", "dmz": "bridge:br-dmz"}, got[0].Networks)
	require.Equal(t, "dr-iso", got[0].TestNetwork)
	require.True(t, got[0].NewMACs)

	src := EnrollAgent(t, c, c.Addr, "src")
	_ = src
	img := filepath.Join(t.TempDir(), "vm.raw")
	require.NoError(t, os.WriteFile(img, make([]byte, 1<<20), 0o600))
	r = c.Ferry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--target", "kvm", "--nic", "lan", "--nic", "backup")
	require.NotEqual(t, 0, r.Code, "protect to a target that does not map network backup: %s", r.Stdout)
	require.True(t, strings.Contains(r.Stderr, "backup") && strings.Contains(r.Stderr, "no mapping"), r.Stderr)
	c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--target", "kvm", "--nic", "lan", "--nic", "dmz")

	// A second libvirt target without a map: failover --dry-run to it is
	// refused before anything starts, naming the unmapped networks.
	c.WaitPoint("vm", 0, 2*time.Minute)
	c.MustFerry("targets", "add", "kvm2", "--agent", "dr", "--dir", t.TempDir(), "--driver", "libvirt", "--uri", d.URI)
	r = c.Ferry("failover", "vm", "--target", "kvm2", "--dry-run", "--wait")
	require.NotEqual(t, 0, r.Code, "dry-run to a target without a map: %s", r.Stdout)
	require.Contains(t, r.Stdout+r.Stderr, "dmz, lan have no mapping on target kvm2")
}

// libvirtSite is a recovery site whose target drives a private libvirtd.
type libvirtSite struct {
	d    *libvirtd.Daemon
	l    *golibvirt.Libvirt
	c    *Controller
	src  *Agent
	dir  string
	mnt  string
	nets []string // the daemon's networks before the test acts
}

func newLibvirtSite(t *testing.T) *libvirtSite {
	t.Helper()
	s := &libvirtSite{mnt: testenv.MountLoop(t, "xfs", 1<<30)}
	s.d = libvirtd.Start(t)
	s.d.DefineIsolatedNetwork(t, "dr-lan", "fdrlan0")
	s.d.DefineIsolatedNetwork(t, "dr-iso", "fdriso0")
	s.l = s.d.Connect(t)
	s.nets = s.networks(t)
	s.c = StartController(t)
	s.src = EnrollAgent(t, s.c, s.c.Addr, "src")
	EnrollAgent(t, s.c, s.c.Addr, "dr-agent")
	s.dir = t.TempDir()
	s.c.MustFerry("targets", "add", "dr", "--agent", "dr-agent", "--dir", s.dir, "--driver", "libvirt", "--uri", s.d.URI,
		"--shutdown-timeout", "1s", "--network", "lan=dr-lan", "--test-network", "dr-iso")
	s.c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	return s
}

func (s *libvirtSite) networks(t *testing.T) []string {
	t.Helper()
	nets, _, err := s.l.ConnectListAllNetworks(1, 0)
	require.NoError(t, err)
	var out []string
	for _, n := range nets {
		out = append(out, n.Name)
	}
	return out
}

func (s *libvirtSite) domains(t *testing.T) []string {
	t.Helper()
	doms, _, err := s.l.ConnectListAllDomains(1, 0)
	require.NoError(t, err)
	var out []string
	for _, d := range doms {
		out = append(out, d.Name)
	}
	return out
}

func (s *libvirtSite) domain(t *testing.T, name string) (libvirtxml.Domain, golibvirt.DomainState) {
	t.Helper()
	dom, err := s.l.DomainLookupByName(name)
	require.NoError(t, err, "domain %s", name)
	x, err := s.l.DomainGetXMLDesc(dom, 0)
	require.NoError(t, err)
	var dx libvirtxml.Domain
	require.NoError(t, dx.Unmarshal(x))
	st, _, err := s.l.DomainGetState(dom, 0)
	require.NoError(t, err)
	return dx, golibvirt.DomainState(st)
}

func (s *libvirtSite) files(t *testing.T) []string {
	t.Helper()
	return (&Site{Dir: s.dir}).Files(t)
}

// protect makes a small image, protects it to the libvirt target and waits
// until its first point is staged.
func (s *libvirtSite) protect(t *testing.T, machine string, extra ...string) string {
	t.Helper()
	img := filepath.Join(s.mnt, machine+".img")
	makeImage(t, img, 11, 8<<20)
	s.c.MustFerry(append([]string{"protect", machine, "--agent", "src", "--disk", "d=" + img, "--policy", "p", "--target", "dr",
		"--cpus", "1", "--memory", "64MiB", "--nic", "lan"}, extra...)...)
	p := s.c.WaitPoint(machine, 0, 2*time.Minute)
	(&Site{Dir: s.dir}).waitStaged(t, machine, p.ID)
	return img
}

func fileSources(dx libvirtxml.Domain, device string) []string {
	var out []string
	for _, dk := range dx.Devices.Disks {
		if dk.Device == device && dk.Source != nil && dk.Source.File != nil {
			out = append(out, dk.Source.File.File)
		}
	}
	return out
}

// TestFailoverLibvirt: a test failover of a machine with an IP mapping
// defines vm-test on the test clone's disk, on the isolated test network
// only, with a NoCloud seed carrying the address, running; cleanup leaves no
// domain, no network and no file behind. A failover then defines vm on the
// failed-over (live) disk, whose bytes are the source's, and it runs.
func TestFailoverLibvirt(t *testing.T) {
	s := newLibvirtSite(t)
	img := s.protect(t, "vm", "--ip", "lan=10.9.8.7/24,10.9.8.1")
	kept := keepCopy(t, img)
	files := s.files(t)

	j := s.c.runJob(t, 0, "failover", "vm", "--test")
	dx, st := s.domain(t, "vm-test")
	require.Equal(t, golibvirt.DomainRunning, st)
	require.Equal(t, []string{filepath.Join(s.dir, "vm", "test-"+j.ID, "d.raw")}, fileSources(dx, "disk"))
	require.Len(t, dx.Devices.Interfaces, 1)
	require.Equal(t, "dr-iso", dx.Devices.Interfaces[0].Source.Network.Network, "a test machine joins only the test network")
	seeds := fileSources(dx, "cdrom")
	require.Len(t, seeds, 1, "a NoCloud seed is attached")
	nc, err := libvirt.ReadSeed(seeds[0])
	require.NoError(t, err)
	require.Contains(t, nc.NetworkConfig, `"10.9.8.7/24"`)
	require.Contains(t, nc.NetworkConfig, `via: "10.9.8.1"`)
	require.NotContains(t, s.domains(t), "vm", "a test failover does not touch the production name")

	s.c.runJob(t, 0, "cleanup", "vm")
	require.Empty(t, s.domains(t), "cleanup leaves no domain")
	require.ElementsMatch(t, s.nets, s.networks(t), "cleanup leaves no network")
	require.ElementsMatch(t, files, s.files(t), "cleanup leaves no file")

	s.c.runJob(t, 0, "failover", "vm")
	dx, st = s.domain(t, "vm")
	require.Equal(t, golibvirt.DomainRunning, st)
	live := filepath.Join(s.dir, "vm", "live", "d.raw")
	require.Equal(t, []string{live}, fileSources(dx, "disk"))
	require.Equal(t, "dr-lan", dx.Devices.Interfaces[0].Source.Network.Network)
	require.Equal(t, uint(1), dx.VCPU.Value)
	require.Equal(t, uint(64<<10), dx.Memory.Value)
	requireSameFile(t, kept, live)
}

// TestPlanReIPLibvirt: a machine protected with --ip is a member of a plan
// that re-IPs its NIC: the plan's dry run prints the plan's address, and a
// test failover of the plan starts vm-test with a NoCloud seed carrying the
// plan's address and gateway, not the machine's own; cleanup of the plan
// leaves no domain.
func TestPlanReIPLibvirt(t *testing.T) {
	s := newLibvirtSite(t)
	s.protect(t, "vm", "--ip", "lan=10.9.8.7/24,10.9.8.1")
	s.c.MustFerry("plans", "create", "app")
	s.c.MustFerry("plans", "add-group", "app")
	s.c.MustFerry("plans", "add-machine", "app", "--group", "1", "vm", "--ip", "lan=10.9.8.50/24,10.9.8.254")

	dry := s.c.MustFerry("failover", "--plan", "app", "--test", "--point", "latest-processed", "--dry-run")
	require.Contains(t, dry, "re-IP (the plan's, over protect --ip): lan=10.9.8.50/24,10.9.8.254\n", dry)
	require.Empty(t, s.domains(t), "a dry run defines nothing")

	s.c.runJob(t, 0, "failover", "--plan", "app", "--test", "--point", "latest-processed")
	dx, st := s.domain(t, "vm-test")
	require.Equal(t, golibvirt.DomainRunning, st)
	seeds := fileSources(dx, "cdrom")
	require.Len(t, seeds, 1, "a NoCloud seed is attached")
	nc, err := libvirt.ReadSeed(seeds[0])
	require.NoError(t, err)
	require.Contains(t, nc.NetworkConfig, `"10.9.8.50/24"`)
	require.Contains(t, nc.NetworkConfig, `via: "10.9.8.254"`)
	require.NotContains(t, nc.NetworkConfig, "10.9.8.7", "the plan's address replaces the machine's own")
	require.NotContains(t, nc.NetworkConfig, "10.9.8.1\"", "the plan's gateway replaces the machine's own")

	s.c.runJob(t, 0, "cleanup", "--plan", "app")
	require.Empty(t, s.domains(t), "cleanup leaves no domain")
}

// TestPlannedFailoverLibvirtSource: the home site's driver is libvirt too (a
// second domain in the same daemon stands for the home site's machine,
// running on the protected image): a planned failover stops it through the
// source agent and starts the machine at the target.
func TestPlannedFailoverLibvirtSource(t *testing.T) {
	s := newLibvirtSite(t)
	img := filepath.Join(s.mnt, "db.img")
	makeImage(t, img, 12, 8<<20)
	home, err := libvirt.New(map[string]string{libvirt.OptURI: s.d.URI})
	require.NoError(t, err)
	require.NoError(t, home.Start(context.Background(), driver.Spec{Name: "home-db", Memory: 64 << 20,
		Disks: []driver.Disk{{Name: "d", Path: img, Format: "raw"}}}))
	_, st := s.domain(t, "home-db")
	require.Equal(t, golibvirt.DomainRunning, st)
	s.c.MustFerry("protect", "db", "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", "dr",
		"--memory", "64MiB", "--driver", "libvirt", "--uri", s.d.URI, "--domain", "home-db", "--shutdown-timeout", "1s")
	p := s.c.WaitPoint("db", 0, 2*time.Minute)
	(&Site{Dir: s.dir}).waitStaged(t, "db", p.ID)

	j := s.c.runJob(t, 0, "failover", "db", "--planned")
	_, st = s.domain(t, "home-db")
	require.Equal(t, golibvirt.DomainShutoff, st, "the planned failover stopped the home site's domain")
	dx, st := s.domain(t, "db")
	require.Equal(t, golibvirt.DomainRunning, st)
	live := filepath.Join(s.dir, "db", "live", "d.raw")
	require.Equal(t, []string{live}, fileSources(dx, "disk"))
	requireSameFile(t, img, live)
	t.Logf("job %s", j.ID)
}

// TestFailoverLibvirtStartFails: a domain that cannot start fails the
// start step with libvirt's (qemu's) reason, and the job is not retried into
// a hang. The disk is made unusable for real: another qemu (a domain of the
// same daemon) holds the staged file open, so qemu's image lock refuses the
// failed-over machine's write access to the same file after promote.
func TestFailoverLibvirtStartFails(t *testing.T) {
	s := newLibvirtSite(t)
	s.protect(t, "vm")
	blocker, err := libvirt.New(map[string]string{libvirt.OptURI: s.d.URI})
	require.NoError(t, err)
	staged := filepath.Join(s.dir, "vm", "staged", "d.raw")
	require.NoError(t, blocker.Start(context.Background(), driver.Spec{Name: "blocker", Memory: 64 << 20,
		Disks: []driver.Disk{{Name: "d", Path: staged, Format: "raw"}}}))
	_, st := s.domain(t, "blocker")
	require.Equal(t, golibvirt.DomainRunning, st, "precondition: the blocker holds the disk")

	j := s.c.runJob(t, 3, "failover", "vm")
	require.Equal(t, "failed", j.step("start"), "%+v", j)
	require.Contains(t, j.Error, "libvirt driver start")
	require.Contains(t, j.Error, "lock", "libvirt's reason: %s", j.Error)
	_, st = s.domain(t, "vm")
	require.NotEqual(t, golibvirt.DomainRunning, st)
}
