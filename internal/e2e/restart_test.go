package e2e

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/internal/workload"
	"github.com/ferrydr/ferry/protocol/faultnet"
)

// randomImage writes size bytes of random data (incompressible) at the
// start of path, creating it if needed.
func randomImage(t *testing.T, path string, size int64) {
	t.Helper()
	// Not os.Create: rewriting a protected image must never truncate it
	// (a cycle could see it empty).
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	require.NoError(t, err)
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		rand.Read(buf)
		_, err := f.WriteAt(buf, off)
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())
}

func proxyTo(t *testing.T, addr string) *faultnet.Proxy {
	t.Helper()
	p, err := faultnet.Listen(addr, nil)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// TestAgentKilledDuringInitialSyncResendsLittle: kill -9 of the agent after
// at least half of the initial sync of a 1 GiB image of random data is
// acknowledged, then restart: the bytes through the proxy stay within
// 1.1 × 1 GiB in total.
func TestAgentKilledDuringInitialSyncResendsLittle(t *testing.T) {
	const size = 1 << 30
	img := filepath.Join(t.TempDir(), "random.img")
	randomImage(t, img, size)

	c := StartController(t)
	proxy := proxyTo(t, c.Addr)
	a := EnrollAgent(t, c, proxy.Addr(), "src")
	c.MustFerry("protect", "big", "--agent", "src", "--disk", "d="+img)

	// 60% through the proxy means at least half acknowledged: the agent
	// keeps only a few MiB in flight.
	require.Eventually(t, func() bool { up, _ := proxy.Bytes(); return up >= size*6/10 }, 5*time.Minute, 20*time.Millisecond)
	a.Proc.Kill()
	up, _ := proxy.Bytes()
	t.Logf("agent killed after %d MiB through the proxy", up>>20)
	require.Empty(t, c.Points("big"), "the initial sync was not complete")

	a.Start()
	c.WaitPoint("big", 0, 5*time.Minute)
	total, _ := proxy.Bytes()
	t.Logf("total through the proxy: %d MiB for a %d MiB image (%.3f×)", total>>20, size>>20, float64(total)/size)
	require.LessOrEqual(t, total, int64(size*11/10), "a restart resends at most the unacknowledged window")

	dir := c.Export("big", c.Points("big")[0].ID)
	requireSameFile(t, img, filepath.Join(dir, "d.raw"))
}

// TestControllerKilledMidCycleLosesNoPoint: kill -9 of the controller while
// cycles run: every point listed before is there after the restart, Verify
// is clean, and replication resumes by itself.
func TestControllerKilledMidCycleLosesNoPoint(t *testing.T) {
	const size = 128 << 20
	img := filepath.Join(t.TempDir(), "disk.img")
	makeImage(t, img, 31, size)
	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "src")
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--policy", "fast")
	c.WaitPoint("vm", 0, 2*time.Minute)
	w := StartWriter(t, []string{img}, size, 8, 100*time.Microsecond)
	pts := pointsDuring(t, c, "vm", 1, 3, time.Minute)
	before := c.Points("vm")
	require.GreaterOrEqual(t, len(before), len(pts))
	c.Restart() // SIGKILL while the writer keeps the agent in a cycle
	after := c.Points("vm")
	for _, p := range before {
		found := false
		for _, q := range after {
			found = found || (q.ID == p.ID && q.Time.Equal(p.Time))
		}
		require.True(t, found, "point %d lost by the controller crash", p.ID)
	}
	newest := after[len(after)-1].ID
	c.WaitPoint("vm", newest, 2*time.Minute) // resumes by itself
	w.Stop()
	out := c.MustFerry("verify", "vm")
	require.Contains(t, out, "verified")
	// The newest point after the writer stopped equals the disk.
	// One listing: two calls could see different lengths while the last
	// cycle of the stopped writer still lands.
	listed := c.Points("vm")
	final := c.WaitPoint("vm", listed[len(listed)-1].ID, 2*time.Minute)
	dir := c.Export("vm", final.ID)
	requireSameFile(t, img, filepath.Join(dir, "d.raw"))
}

// TestLostAgentStateTriggersHashResync: the agent's block maps are deleted
// while it is stopped; on restart it resyncs by hashes and sends only what
// differs — never a blind full copy.
func TestLostAgentStateTriggersHashResync(t *testing.T) {
	const size = 256 << 20
	img := filepath.Join(t.TempDir(), "disk.img")
	randomImage(t, img, size)
	c := StartController(t)
	proxy := proxyTo(t, c.Addr)
	a := EnrollAgent(t, c, proxy.Addr(), "src")
	c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img)
	p1 := c.WaitPoint("vm", 0, 2*time.Minute)
	a.Proc.Kill()
	require.NoError(t, os.RemoveAll(filepath.Join(a.StateDir, "machines")))
	require.NoError(t, workload.Apply(img, 3, workload.Delta(3, size, 0.001)))
	up0, _ := proxy.Bytes()
	a.Start()
	p2 := c.WaitPoint("vm", p1.ID, 2*time.Minute)
	up1, _ := proxy.Bytes()
	sent := up1 - up0
	t.Logf("resync after lost state sent %d KiB for a %d MiB disk", sent>>10, size>>20)
	require.Less(t, sent, int64(size/10), "a hash resync, not a full copy")
	require.Contains(t, a.Proc.Output(), "hash resync")
	dir := c.Export("vm", p2.ID)
	requireSameFile(t, img, filepath.Join(dir, "d.raw"))
}

func requireSameFile(t *testing.T, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	require.NoError(t, err)
	defer fa.Close()
	fb, err := os.Open(b)
	require.NoError(t, err)
	defer fb.Close()
	sa, err := fa.Stat()
	require.NoError(t, err)
	sb, err := fb.Stat()
	require.NoError(t, err)
	require.Equal(t, sa.Size(), sb.Size(), "sizes of %s and %s differ", a, b)
	// In pieces: disks here reach 16 GiB.
	x, y := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); off < sa.Size(); off += int64(len(x)) {
		n, err := fa.ReadAt(x, off)
		if err != io.EOF {
			require.NoError(t, err)
		}
		m, err := fb.ReadAt(y[:n], off)
		if err != io.EOF {
			require.NoError(t, err)
		}
		require.Equal(t, n, m)
		if !bytes.Equal(x[:n], y[:n]) {
			require.Failf(t, "files differ", "%s and %s differ in the 4 MiB at offset %d", a, b, off)
		}
	}
}

// TestResumedCycleRechecksUnacknowledgedBlocks: the agent is killed in the
// middle of a cycle, when some blocks are stored in the pending point but
// their acknowledgement never reached it; the changed region then goes back
// to its old content. The resumed cycle must resend those blocks (their map
// entries still hold the old content): the next points equal the disk.
func TestResumedCycleRechecksUnacknowledgedBlocks(t *testing.T) {
	mnt := testenv.MountLoop(t, "xfs", 1<<30)
	const size = 96 << 20
	img := filepath.Join(mnt, "d.img")
	randomImage(t, img, size)
	original, err := os.ReadFile(img)
	require.NoError(t, err)
	c := StartController(t)
	proxy := proxyTo(t, c.Addr)
	a := EnrollAgent(t, c, proxy.Addr(), "src")
	c.MustFerry("policies", "create", "p", "--rp-every", "1s", "--bandwidth", "16MiB/s")
	c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--policy", "p")
	p1 := c.WaitPoint("vm", 0, 2*time.Minute)

	// Change 64 MiB: a cycle of about 4 s at 16 MiB/s; kill the agent
	// half-way, while batches are stored and their acks on the way.
	up0, _ := proxy.Bytes()
	randomImage(t, img, 64<<20)
	require.Eventually(t, func() bool { up, _ := proxy.Bytes(); return up > up0+24<<20 }, time.Minute, 10*time.Millisecond)
	a.Proc.Kill()
	// Back to the old content, in place.
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(original[:64<<20], 0)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	a.Start()

	// A point after the restart holds the disk as it is: the old content.
	var last Point
	require.Eventually(t, func() bool {
		ps := c.Points("vm")
		if len(ps) == 0 || ps[len(ps)-1].ID <= p1.ID || ps[len(ps)-1].ID == last.ID {
			return false
		}
		last = ps[len(ps)-1]
		got, err := os.ReadFile(filepath.Join(c.Export("vm", last.ID), "d.raw"))
		return err == nil && bytes.Equal(got, original)
	}, 90*time.Second, 500*time.Millisecond, "no point after the restart equals the disk")
	require.Contains(t, a.Proc.Output(), "rechecking the blocks the pending point stored")
}
