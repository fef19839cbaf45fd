package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/agent/driver/libvirt"
	"github.com/ferrydr/ferry/internal/libvirtd"
	"github.com/ferrydr/ferry/internal/testenv"
)

// TestRoundTripLibvirt: the round trip with libvirt drivers in both
// directions. The home site's machine is a libvirt domain (home-vm, defined
// over a raw disk) that the machine is protected with (--driver libvirt
// --domain home-vm); the recovery site's target is libvirt too (one private
// libvirtd stands for both hosts). A planned failover stops home-vm and
// starts vm on the failed-over disk; after commit the test writes into
// that disk (the guest is idle firmware, it writes nothing itself) and
// keeps its own copy in step; re-protect replicates home; more writes;
// failback stops vm at the recovery site through its driver and starts
// home-vm again through the home driver, on its original disk, whose
// sha256 equals the test's copy. Between them a failback test runs a copy
// (vm-test) on a clone in the test directory through the same home driver,
// and cleanup undefines it. A second round (unplanned failover with
// home-vm running, reprotect --stop-source, unplanned failback --point,
// commit) ends back home too. No guest OS boots: a domain is running
// as soon as qemu runs its firmware.
func TestRoundTripLibvirt(t *testing.T) {
	s, r, live, testDir := reverseProtectedLibvirt(t)

	// A failback test: the home driver defines vm-test on a clone of the
	// home disk in the test directory (no NIC: the home site has no test
	// network), running; nothing else stops or starts. Cleanup undefines
	// it and removes the clone.
	r.write(t, live, 20)
	s.c.runJob(t, 0, "failback", "vm", "--test")
	dx, st := s.domain(t, "vm-test")
	require.Equal(t, golibvirt.DomainRunning, st, "the failback test's copy runs at home")
	clone := fileSources(dx, "disk")
	require.Len(t, clone, 1)
	require.True(t, strings.HasPrefix(clone[0], testDir+string(filepath.Separator)), "the test copy runs on a clone in the test directory, not on %s", clone[0])
	require.Empty(t, dx.Devices.Interfaces, "a test copy joins no production network")
	r.requireMirror(t, clone[0], "the failback test's clone")
	_, st = s.domain(t, "home-vm")
	require.Equal(t, golibvirt.DomainShutoff, st, "a failback test does not start the home domain")
	_, st = s.domain(t, "vm")
	require.Equal(t, golibvirt.DomainRunning, st, "a failback test does not stop the recovery site's machine")
	r.requireState(t, "test-failed-back", "recovery", "reverse")
	s.c.runJob(t, 0, "cleanup", "vm")
	require.NotContains(t, s.domains(t), "vm-test", "cleanup undefined the test copy")
	left, err := os.ReadDir(filepath.Join(testDir, "vm"))
	require.NoError(t, err)
	require.Empty(t, left, "cleanup removed the clone")
	r.requireState(t, "reverse-protected", "recovery", "reverse")

	r.write(t, live, 40) // more writes while replicating home
	s.c.runJob(t, 0, "failback", "vm")
	_, st = s.domain(t, "vm")
	require.Equal(t, golibvirt.DomainShutoff, st, "failback stopped the machine at the recovery site")
	dx, st = s.domain(t, "home-vm")
	require.Equal(t, golibvirt.DomainRunning, st, "failback started the home domain")
	require.Equal(t, []string{r.img}, fileSources(dx, "disk"), "the home domain runs on its original disk")
	r.requireMirror(t, r.img, "home disk after failback")
	r.requireState(t, "back-home", "home", "forward")

	// Forward again, and this time the home domain still runs when the
	// machine comes back: an unplanned failover leaves home-vm running,
	// re-protect refuses to write its disk until --stop-source, which stops
	// it through the libvirt home driver (shutdown, then destroy).
	r.write(t, r.img, 30) // writes at home (the guest is idle firmware)
	s.c.runJob(t, 0, "reprotect", "vm")
	r.requireState(t, "protected", "home", "forward")
	s.c.runJob(t, 0, "failover", "vm")
	r.requireMirror(t, live, "failed over again")
	_, st = s.domain(t, "home-vm")
	require.Equal(t, golibvirt.DomainRunning, st, "an unplanned failover does not stop the home domain")
	s.c.runJob(t, 0, "commit", "vm", "--force")
	r.write(t, live, 30)
	j := s.c.runJob(t, 3, "reprotect", "vm")
	require.Contains(t, j.Error, "running at its home site")
	_, st = s.domain(t, "home-vm")
	require.Equal(t, golibvirt.DomainRunning, st, "a refused re-protect leaves the home domain alone")
	s.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	_, st = s.domain(t, "home-vm")
	require.Equal(t, golibvirt.DomainShutoff, st, "re-protect --stop-source stopped the home domain through its driver")
	r.requireMirror(t, r.img, "home disk after the second re-protect")

	// This time an unplanned failback to the newest reverse point (which
	// holds every write: none since the re-protect): the reachable
	// recovery site's vm is stopped, home-vm started through the home
	// driver; commit ends it.
	pts := s.c.Points("vm")
	require.NotEmpty(t, pts)
	s.c.runJob(t, 0, "failback", "vm", "--point", fmt.Sprint(pts[len(pts)-1].ID))
	r.requireState(t, "failed-back", "home", "forward")
	_, st = s.domain(t, "vm")
	require.Equal(t, golibvirt.DomainShutoff, st, "the unplanned failback stopped the reachable recovery site's machine")
	_, st = s.domain(t, "home-vm")
	require.Equal(t, golibvirt.DomainRunning, st, "the unplanned failback started the home domain")
	r.requireMirror(t, r.img, "home disk after the unplanned failback")
	s.c.runJob(t, 0, "commit", "vm", "--force")
	r.requireState(t, "back-home", "home", "forward")
}

// reverseProtectedLibvirt sets up TestRoundTripLibvirt's sites (a libvirt
// home domain home-vm over a raw disk, a libvirt target) and takes the
// machine vm through a planned failover, commit, writes at the recovery
// site and reprotect (with a failback test directory), checking each step.
// It returns the sites, the round trip's disk and mirror, the live disk at
// the recovery site and the test directory.
func reverseProtectedLibvirt(t *testing.T) (s *libvirtSite, r *roundTrip, live, testDir string) {
	testenv.RequireRoot(t)
	mnt := testenv.MountLoop(t, "xfs", 1<<30) // before libvirtd: its mount namespace sees it
	d := libvirtd.Start(t)                    // skips when libvirtd or qemu-system-x86_64 is missing
	s = &libvirtSite{d: d, l: d.Connect(t), dir: filepath.Join(mnt, "dr"), mnt: mnt}
	require.NoError(t, os.MkdirAll(s.dir, 0o700))
	s.c = StartController(t)
	EnrollAgent(t, s.c, s.c.Addr, "home")
	EnrollAgent(t, s.c, s.c.Addr, "dr-agent")
	s.c.MustFerry("targets", "add", "dr", "--agent", "dr-agent", "--dir", s.dir, "--driver", "libvirt", "--uri", d.URI,
		"--shutdown-timeout", "1s")
	s.c.MustFerry("policies", "create", "p", "--rp-every", "1h")

	const size = 8 << 20
	r = &roundTrip{c: s.c, img: filepath.Join(mnt, "vm.img"), rng: newRoundTrip0Rand()}
	r.mirror = makeImage(t, r.img, 13, size)
	home, err := libvirt.New(map[string]string{libvirt.OptURI: d.URI})
	require.NoError(t, err)
	require.NoError(t, home.Start(context.Background(), driver.Spec{Name: "home-vm", Memory: 64 << 20,
		Disks: []driver.Disk{{Name: "d", Path: r.img, Format: "raw"}}}))
	_, st := s.domain(t, "home-vm")
	require.Equal(t, golibvirt.DomainRunning, st, "precondition: the machine runs at home")

	s.c.MustFerry("protect", "vm", "--agent", "home", "--disk", "d="+r.img, "--policy", "p", "--target", "dr",
		"--memory", "64MiB", "--driver", "libvirt", "--uri", d.URI, "--domain", "home-vm", "--shutdown-timeout", "1s")
	p := s.c.WaitPoint("vm", 0, 2*time.Minute)
	(&Site{Dir: s.dir}).waitStaged(t, "vm", p.ID)

	s.c.runJob(t, 0, "failover", "vm", "--planned")
	_, st = s.domain(t, "home-vm")
	require.Equal(t, golibvirt.DomainShutoff, st, "the planned failover stopped the home domain")
	live = filepath.Join(s.dir, "vm", "live", "d.raw")
	dx, st := s.domain(t, "vm")
	require.Equal(t, golibvirt.DomainRunning, st)
	require.Equal(t, []string{live}, fileSources(dx, "disk"))
	r.requireMirror(t, live, "failed over")

	s.c.runJob(t, 0, "commit", "vm", "--force")
	r.write(t, live, 60) // the machine writes at the recovery site
	testDir = filepath.Join(mnt, "fbtest")
	require.NoError(t, os.MkdirAll(testDir, 0o700))
	s.c.runJob(t, 0, "reprotect", "vm", "--stop-source", "--test-dir", testDir)
	r.requireMirror(t, r.img, "home disk after re-protect")
	r.requireState(t, "reverse-protected", "recovery", "reverse")
	_, st = s.domain(t, "home-vm")
	require.Equal(t, golibvirt.DomainShutoff, st, "the home domain stays off while its disk is a replica")
	return s, r, live, testDir
}

// TestFailbackLibvirtHomeGoneIsUndone: a failback whose home domain has
// gone (undefined at the home site while the machine ran at the recovery
// site) fails its start at home with libvirt's reason; the libvirt home
// driver's status then says absent, which proves the machine is not
// running at home, so the failback is undone fully: the home disk equals
// the final point (the test's copy, by sha256), vm runs again at the
// recovery site, the machine is reverse-protected. With home-vm defined
// again, the same failback brings it home.
func TestFailbackLibvirtHomeGoneIsUndone(t *testing.T) {
	s, r, live, _ := reverseProtectedLibvirt(t)
	dom, err := s.l.DomainLookupByName("home-vm")
	require.NoError(t, err)
	homeXML, err := s.l.DomainGetXMLDesc(dom, 0)
	require.NoError(t, err)
	require.NoError(t, s.l.DomainUndefine(dom))

	r.write(t, live, 40)
	j := s.c.runJob(t, 3, "failback", "vm")
	require.Equal(t, "failed", j.step("start-home"), j.Error)
	require.Contains(t, j.Error, "home-vm", "libvirt's reason names the domain")
	notes := strings.Join(j.Machines[0].Notes, "\n")
	require.Contains(t, notes, "the home driver reports the machine absent there: the failback is undone", "notes: %s", notes)
	require.Contains(t, notes, "the home disks were moved back to point")
	r.requireMirror(t, r.img, "home disk after the undone failback")
	r.requireState(t, "reverse-protected", "recovery", "reverse")
	require.NotContains(t, s.domains(t), "home-vm", "nothing defined at home")
	_, st := s.domain(t, "vm")
	require.Equal(t, golibvirt.DomainRunning, st, "the machine runs again at the recovery site")

	_, err = s.l.DomainDefineXML(homeXML)
	require.NoError(t, err)
	r.write(t, live, 20)
	s.c.runJob(t, 0, "failback", "vm")
	_, st = s.domain(t, "home-vm")
	require.Equal(t, golibvirt.DomainRunning, st, "failback started the home domain")
	_, st = s.domain(t, "vm")
	require.Equal(t, golibvirt.DomainShutoff, st)
	r.requireMirror(t, r.img, "home disk after failback")
	r.requireState(t, "back-home", "home", "forward")
}
