package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/netlab"
	"github.com/ferrydr/ferry/internal/testenv"
)

// The network fault tests (docs/netlab.md): a controller, the source agent
// and the recovery-site agent each in their own namespace of a netlab, the
// controller reached only across the lab's router.

// netImage is the size of the images the network tests replicate: 48 MiB
// in CI, 512 MiB under `make soak` (FERRY_SOAK=1, scripts/soak.sh).
func netImage() int {
	if os.Getenv("FERRY_SOAK") == "1" {
		return 512 << 20
	}
	return 48 << 20
}

const (
	// netCap caps the links that a partition test cuts: 64 Mbit/s, so a
	// 48 MiB transfer takes about 6 s and a cut lands in the middle.
	netCap = 64_000_000
	// unackedWindow bounds the data a cut can make Ferry send twice: what
	// crossed the link but was not yet acknowledged. Per data stream (2)
	// that is the yamux receive window the peer may hold unread (1 MiB,
	// protocol.md §4) plus one batch being stored before its ack (at most
	// 4 MiB of block data, agent/ship batchMaxBytes). Bytes that the cut
	// itself swallowed never crossed the router and are not counted.
	unackedWindow = 2 * (1<<20 + 4<<20)
	// resendBound is unackedWindow as the lab counts it, IP bytes (TCP/IP
	// headers ≈ 4 % at 1500-byte packets, 5 % allowed), plus 1 MiB for
	// what a new session costs (TLS handshake, hello, the cycle's
	// manifests sent again, keepalives).
	resendBound = unackedWindow*105/100 + 1<<20
)

// fastKeepalive makes agents notice a cut within about 4 s instead of 40.
var fastKeepalive = []string{"--keepalive-interval", "1s", "--keepalive-timeout", "3s"}

// netRig is a lab with a controller in "controller", a source agent "src"
// in "home" and, when asked, a recovery site "dr" served by an agent in
// "recovery".
type netRig struct {
	lab  *netlab.Lab
	c    *Controller
	home *Agent
	site *Site
	mnt  string
}

func newNetRig(t *testing.T, recovery bool, agentArgs ...string) *netRig {
	t.Helper()
	testenv.RequireRoot(t)
	r := &netRig{lab: netlab.New(t, "home", "recovery", "controller")}
	r.mnt = testenv.MountLoop(t, "xfs", 4<<30) // sparse; soak images reach 2 × 512 MiB
	ctl := r.lab.Site("controller")
	r.c = StartControllerIn(t, ctl.NS, ctl.Addr.String()+":0")
	r.home = EnrollAgentIn(t, r.c, r.lab.Site("home").NS, r.c.Addr, "src", agentArgs...)
	if recovery {
		a := EnrollAgentIn(t, r.c, r.lab.Site("recovery").NS, r.c.Addr, "dr-agent", agentArgs...)
		r.site = AddSiteAgent(t, r.c, a, "dr")
	}
	return r
}

// shape applies a shape to a site and proves it between that site and the
// controller.
func (r *netRig) shape(t *testing.T, site string, sh netlab.Shape) netlab.Proof {
	t.Helper()
	require.NoError(t, r.lab.Site(site).Shape(sh))
	return r.lab.Prove(t, site, "controller")
}

// traffic reads a site's counters.
func (r *netRig) traffic(t *testing.T, site string) netlab.Traffic {
	t.Helper()
	tr, err := r.lab.Site(site).Traffic()
	require.NoError(t, err)
	return tr
}

// image writes size random bytes to a new image on the XFS mount and
// returns its path and the bytes, which the test keeps.
func (r *netRig) image(t *testing.T, name string, size int) (string, []byte) {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	p := filepath.Join(r.mnt, name+".img")
	require.NoError(t, os.WriteFile(p, b, 0o644))
	return p, b
}

// overwrite replaces the first n bytes of an image in place with random
// bytes and updates the test's copy.
func overwrite(t *testing.T, path string, kept []byte, n int) {
	t.Helper()
	rand.Read(kept[:n])
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(kept[:n], 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

// requireExport exports a point and requires it to equal want.
func (r *netRig) requireExport(t *testing.T, machine string, point int64, want []byte) {
	t.Helper()
	dir := r.c.Export(machine, point)
	defer os.RemoveAll(dir)
	got, err := os.ReadFile(filepath.Join(dir, "d.raw"))
	require.NoError(t, err)
	requireSameBytes(t, want, got, fmt.Sprintf("point %d of %s", point, machine))
}

func requireSameBytes(t *testing.T, want, got []byte, what string) {
	t.Helper()
	require.Equal(t, len(want), len(got), "%s: size", what)
	if !bytes.Equal(want, got) {
		for off := 0; off < len(want); off += 1 << 20 {
			end := min(off+1<<20, len(want))
			if !bytes.Equal(want[off:end], got[off:end]) {
				require.Failf(t, "bytes differ", "%s differs from the bytes the test kept in the MiB at offset %d", what, off)
			}
		}
	}
}

const (
	sessionEnded = "controller session ended"
	connected    = "connected to controller"
)

// drAgentConnectedRE finds the recovery agent's connections in the
// controller's log; the group is the agent's port.
var drAgentConnectedRE = regexp.MustCompile(`msg="agent connected" .*agent=dr-agent .*remote=10\.77\.\d+\.\d+:(\d+)`)

// cutWhile cuts site once its counter (from or to the site) has moved
// `after` bytes past base, checks that the partition is real (the router
// holds the cut, the agent logs the end of its session while bytes are
// still owed: fewer than total crossed), runs beforeHeal if given, and
// heals it. It returns the counter at the cut.
func (r *netRig) cutWhile(t *testing.T, site string, to bool, base netlab.Traffic, after, total int64, a *Agent, beforeHeal func()) int64 {
	t.Helper()
	read := func(tr netlab.Traffic) int64 {
		if to {
			return tr.To.Bytes - base.To.Bytes
		}
		return tr.From.Bytes - base.From.Bytes
	}
	require.Eventually(t, func() bool { return read(r.traffic(t, site)) >= after }, 3*time.Minute, 20*time.Millisecond,
		"never %d bytes %s %s", after, map[bool]string{true: "to", false: "from"}[to], site)
	s := r.lab.Site(site)
	ended := strings.Count(a.Proc.Output(), sessionEnded)
	conns := strings.Count(a.Proc.Output(), connected)
	require.NoError(t, s.Cut())
	atCut := read(r.traffic(t, site))
	cut, err := s.IsCut()
	require.NoError(t, err)
	require.True(t, cut, "the router holds the cut")
	t.Logf("cut %s after %.1f MiB of %.1f MiB", site, float64(atCut)/(1<<20), float64(total)/(1<<20))
	require.Positive(t, atCut, "data was flowing before the cut")
	require.Less(t, atCut, total, "the cut came while data was still owed")
	// The agent notices: its session ends (keepalive) while the cut holds.
	require.Eventually(t, func() bool { return strings.Count(a.Proc.Output(), sessionEnded) > ended }, time.Minute,
		50*time.Millisecond, "agent %s never noticed the partition", a.Name)
	held := read(r.traffic(t, site))
	require.Equal(t, atCut, held, "nothing crossed the cut")
	if beforeHeal != nil {
		beforeHeal()
	}
	require.NoError(t, s.Heal())
	// It reconnects by itself.
	require.Eventually(t, func() bool { return strings.Count(a.Proc.Output(), connected) > conns }, 2*time.Minute,
		50*time.Millisecond, "agent %s never reconnected after the heal", a.Name)
	return atCut
}

// requireResentWithin checks the bytes a faulted transfer took against a
// clean one of the same size: the difference is what the cut made Ferry
// send twice, at most bound.
func requireResentWithin(t *testing.T, faulted, clean, bound int64, window string) {
	t.Helper()
	resent := faulted - clean
	t.Logf("clean transfer %.2f MiB, with the cut %.2f MiB: %.2f MiB resent (bound %.2f MiB: %s)",
		float64(clean)/(1<<20), float64(faulted)/(1<<20), float64(resent)/(1<<20), float64(bound)/(1<<20), window)
	require.LessOrEqual(t, resent, bound, "a cut resends at most the unacknowledged window (%s)", window)
}

// moveWindow is the unacknowledged window of a move (staging, failover):
// the target agent acknowledges a restore stream once, at its end, and an
// interrupted move is redone as a whole diff (controller/failover move.go),
// so a cut may resend everything that crossed before it — never more.
func moveWindow(atCut int64) int64 { return atCut + 1<<20 }

const shipWindow = "agent/ship: 2 streams × (1 MiB yamux window + 4 MiB batch) acknowledged per batch"

// TestNetPartitionMidInitialSync: the source site is cut from the
// controller in the middle of an initial sync; after the heal the agent
// reconnects and finishes by itself, the point equals the image, and the
// link carried at most the unacknowledged window (resendBound) more than a
// clean sync of an image of the same size.
func TestNetPartitionMidInitialSync(t *testing.T) {
	r := newNetRig(t, false, fastKeepalive...)
	r.shape(t, "home", netlab.Shape{Rate: netCap})

	refImg, refBytes := r.image(t, "ref", netImage())
	t0 := r.traffic(t, "home")
	r.c.MustFerry("protect", "ref", "--agent", "src", "--disk", "d="+refImg)
	p := r.c.WaitPoint("ref", 0, 3*time.Minute)
	clean := r.traffic(t, "home").From.Bytes - t0.From.Bytes
	r.requireExport(t, "ref", p.ID, refBytes)

	img, kept := r.image(t, "vm", netImage())
	t1 := r.traffic(t, "home")
	r.c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img)
	r.cutWhile(t, "home", false, t1, int64(netImage())*4/10, int64(netImage()), r.home, nil)
	require.Empty(t, r.c.Points("vm"), "the initial sync was not complete at the cut")
	p = r.c.WaitPoint("vm", 0, 3*time.Minute)
	faulted := r.traffic(t, "home").From.Bytes - t1.From.Bytes
	r.requireExport(t, "vm", p.ID, kept)
	requireResentWithin(t, faulted, clean, resendBound, shipWindow)
}

// TestNetPartitionMidCycle: the same for a cycle of 24 MiB of changes
// after the initial sync.
func TestNetPartitionMidCycle(t *testing.T) {
	r := newNetRig(t, false, fastKeepalive...)
	r.shape(t, "home", netlab.Shape{Rate: netCap})
	r.c.MustFerry("policies", "create", "p", "--rp-every", "2s")
	img, kept := r.image(t, "vm", netImage())
	r.c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--policy", "p")
	p := r.c.WaitPoint("vm", 0, 3*time.Minute)
	const change = 24 << 20

	// A clean cycle of the same size, measured until a point holds it.
	t0 := r.traffic(t, "home")
	overwrite(t, img, kept, change)
	p = r.waitPointEqual(t, "vm", p.ID, kept)
	clean := r.traffic(t, "home").From.Bytes - t0.From.Bytes

	t1 := r.traffic(t, "home")
	overwrite(t, img, kept, change)
	r.cutWhile(t, "home", false, t1, change/3, change, r.home, nil)
	r.waitPointEqual(t, "vm", p.ID, kept)
	faulted := r.traffic(t, "home").From.Bytes - t1.From.Bytes
	requireResentWithin(t, faulted, clean, resendBound, shipWindow)
}

// waitPointEqual waits for points of machine after `after` until one
// equals want (the writer has stopped: a later point must hold it).
func (r *netRig) waitPointEqual(t *testing.T, machine string, after int64, want []byte) Point {
	t.Helper()
	var last Point
	deadline := time.Now().Add(3 * time.Minute)
	for {
		p := r.c.WaitPoint(machine, after, time.Until(deadline))
		dir := r.c.Export(machine, p.ID)
		got, err := os.ReadFile(filepath.Join(dir, "d.raw"))
		os.RemoveAll(dir)
		require.NoError(t, err)
		if bytes.Equal(got, want) {
			return p
		}
		require.True(t, time.Now().Before(deadline), "no point of %s equals the image (last %d)", machine, last.ID)
		last, after = p, p.ID
	}
}

// TestNetPartitionMidStaging: the recovery site is cut while the
// controller stages a new point there; after the heal the staged replica
// catches up by itself and equals the image. A move is acknowledged once,
// at its end, and redone whole: the bytes resent are at most what crossed
// before the cut (moveWindow), not the replication window.
func TestNetPartitionMidStaging(t *testing.T) {
	r := newNetRig(t, true, fastKeepalive...)
	r.shape(t, "recovery", netlab.Shape{Rate: netCap})

	refImg, refBytes := r.image(t, "ref", netImage())
	t0 := r.traffic(t, "recovery")
	r.c.MustFerry("protect", "ref", "--agent", "src", "--disk", "d="+refImg, "--target", "dr")
	p := r.c.WaitPoint("ref", 0, 3*time.Minute)
	r.site.waitStaged(t, "ref", p.ID)
	clean := r.traffic(t, "recovery").To.Bytes - t0.To.Bytes
	requireSameFileBytes(t, refBytes, r.site.StagedPath("ref", "d"))

	img, kept := r.image(t, "vm", netImage())
	t1 := r.traffic(t, "recovery")
	r.c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--target", "dr")
	atCut := r.cutWhile(t, "recovery", true, t1, int64(netImage())*4/10, int64(netImage()), r.site.Agent, nil)
	p = r.c.WaitPoint("vm", 0, 3*time.Minute)
	r.site.waitStaged(t, "vm", p.ID)
	faulted := r.traffic(t, "recovery").To.Bytes - t1.To.Bytes
	requireSameFileBytes(t, kept, r.site.StagedPath("vm", "d"))
	requireResentWithin(t, faulted, clean, moveWindow(atCut), "one acknowledgement per move: what crossed before the cut")
}

func requireSameFileBytes(t *testing.T, want []byte, path string) {
	t.Helper()
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	requireSameBytes(t, want, got, path)
}

// TestNetPartitionMidFailover: the recovery site is cut while a failover
// moves 24 MiB of changes there, and its old connection stays dead after
// the heal (as behind a firewall that lost its flows): the agent's new
// session replaces it at the controller. The job finishes by itself and
// the failed-over disk equals the source image after its last write. The
// link carried at most the change plus what crossed before the cut
// (moveWindow). While the controller closed (rather than abandoned) a
// replaced session, the job failed here: the restore stream's "session
// closed" is final.
func TestNetPartitionMidFailover(t *testing.T) {
	r := newNetRig(t, true, fastKeepalive...)
	r.shape(t, "recovery", netlab.Shape{Rate: netCap})
	r.c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	img, kept := r.image(t, "vm", netImage())
	r.c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", "dr")
	p := r.c.WaitPoint("vm", 0, 3*time.Minute)
	r.site.waitStaged(t, "vm", p.ID)
	const change = 24 << 20
	overwrite(t, img, kept, change) // the writer stops here

	t1 := r.traffic(t, "recovery")
	id := strings.TrimSpace(r.c.MustFerry("failover", "vm"))
	r.c.waitMoving(t, id)
	// The agent's connection as the controller saw it arrive.
	m := drAgentConnectedRE.FindAllStringSubmatch(r.c.Proc.Output(), -1)
	require.NotEmpty(t, m, "the controller logged the recovery agent's connection")
	oldPort, err := strconv.ParseUint(m[len(m)-1][1], 10, 16)
	require.NoError(t, err)
	recovery := r.lab.Site("recovery")
	atCut := r.cutWhile(t, "recovery", true, t1, 1<<20, change, r.site.Agent, func() {
		// The old connection stays dead after the heal (no reset reaches
		// the controller): only the agent's new session can end it.
		require.NoError(t, recovery.Blackhole(uint16(oldPort)))
	})
	j := r.c.waitJob(t, id, 5*time.Minute)
	require.Equal(t, "succeeded", j.State, "job error: %s", j.Error)
	disks := r.site.Hyp.Disks(t, "vm")
	require.Len(t, disks, 1)
	requireSameFileBytes(t, kept, disks[0])
	moved := r.traffic(t, "recovery").To.Bytes - t1.To.Bytes
	// A clean move carries the changed blocks (IP bytes: +5 %).
	requireResentWithin(t, moved, change*105/100, moveWindow(atCut), "one acknowledgement per move: what crossed before the cut")
}

// TestNetLoss10: 10 % of the packets between the source site and the
// controller are lost in each direction: the initial sync and a cycle
// complete by themselves and their points equal the image.
func TestNetLoss10(t *testing.T) {
	r := newNetRig(t, false)
	r.shape(t, "home", netlab.Shape{Loss: 10})
	r.c.MustFerry("policies", "create", "p", "--rp-every", "2s")
	img, kept := r.image(t, "vm", netImage()*2/3)
	r.c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--policy", "p")
	p := r.c.WaitPoint("vm", 0, 4*time.Minute)
	r.requireExport(t, "vm", p.ID, kept)
	overwrite(t, img, kept, 8<<20)
	r.waitPointEqual(t, "vm", p.ID, kept)
}

// TestNetRTT100ms: 100 ms round trips between the source site and the
// controller (25 ms one way at each end): the initial sync and a cycle
// complete and their points equal the image.
func TestNetRTT100ms(t *testing.T) {
	r := newNetRig(t, false)
	require.NoError(t, r.lab.Site("controller").Shape(netlab.Shape{Delay: 25 * time.Millisecond}))
	pr := r.shape(t, "home", netlab.Shape{Delay: 25 * time.Millisecond})
	require.Equal(t, 100*time.Millisecond, pr.WantRTT)
	r.c.MustFerry("policies", "create", "p", "--rp-every", "2s")
	img, kept := r.image(t, "vm", netImage())
	r.c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--policy", "p")
	p := r.c.WaitPoint("vm", 0, 3*time.Minute)
	r.requireExport(t, "vm", p.ID, kept)
	overwrite(t, img, kept, 8<<20)
	r.waitPointEqual(t, "vm", p.ID, kept)
}
