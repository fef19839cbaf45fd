package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// TestBandwidthLimitIsHonoured: a 2 MiB/s policy stretches the initial
// sync of 16 MiB of random data to about 8 s, measured by the bytes
// through the proxy.
func TestBandwidthLimitIsHonoured(t *testing.T) {
	const size, limit = 16 << 20, 2 << 20
	img := filepath.Join(t.TempDir(), "d.img")
	randomImage(t, img, size)
	c := StartController(t)
	proxy := proxyTo(t, c.Addr)
	EnrollAgent(t, c, proxy.Addr(), "src")
	c.MustFerry("policies", "create", "slow", "--bandwidth", "2MiB/s")
	up0, _ := proxy.Bytes()
	start := time.Now()
	c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--policy", "slow")
	c.WaitPoint("vm", 0, 2*time.Minute)
	elapsed := time.Since(start)
	up1, _ := proxy.Bytes()
	rate := float64(up1-up0) / elapsed.Seconds()
	t.Logf("%d MiB in %s: %.2f MiB/s against a 2 MiB/s limit", (up1-up0)>>20, elapsed.Round(time.Millisecond), rate/(1<<20))
	// The limiter allows one burst (up to 2 MiB) on top of the rate.
	require.LessOrEqual(t, rate, 1.25*limit, "the bandwidth limit was exceeded")
	require.GreaterOrEqual(t, up1-up0, int64(size), "everything was sent")
}

// TestAppConsistentPoints: pre/post-snapshot commands run around the view
// and the points are labelled app-consistent; when the pre-snapshot
// command fails they are crash-consistent.
func TestAppConsistentPoints(t *testing.T) {
	mnt := testenv.MountLoop(t, "xfs", 1<<30)
	img := filepath.Join(mnt, "d.img")
	makeImage(t, img, 51, 32<<20)
	marks := filepath.Join(t.TempDir(), "marks")
	c := StartController(t)
	src := EnrollAgent(t, c, c.Addr, "src")
	c.MustFerry("policies", "create", "app", "--rp-every", "1s", "--app-every", "1s")
	c.MustFerry("protect", "db", "--agent", "src", "--disk", "d="+img, "--policy", "app",
		"--pre-snapshot", "echo pre-$FERRY_MACHINE >> "+marks, "--post-snapshot", "echo post >> "+marks)
	p := c.WaitPoint("db", 0, time.Minute)
	require.Equal(t, "app-consistent", p.Consistency)
	b, err := os.ReadFile(marks)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(b), "pre-db\npost\n"), "got %q", b)

	// Unprotect: the agent drops what it kept for the machine (its kept
	// reflink base, its block maps).
	views := filepath.Join(mnt, ".ferry-views", "db")
	maps := filepath.Join(src.StateDir, "machines", "db")
	require.DirExists(t, views)
	require.DirExists(t, maps)
	c.MustFerry("unprotect", "db")
	require.Eventually(t, func() bool {
		_, e1 := os.Stat(views)
		_, e2 := os.Stat(maps)
		return os.IsNotExist(e1) && os.IsNotExist(e2)
	}, 30*time.Second, 50*time.Millisecond, "the agent keeps views or maps of an unprotected machine")
	c.MustFerry("protect", "db2", "--agent", "src", "--disk", "d="+img, "--policy", "app", "--pre-snapshot", "exit 3")
	p = c.WaitPoint("db2", 0, time.Minute)
	require.Equal(t, "crash-consistent", p.Consistency, "a failed quiesce is never app-consistent")
}

// TestRetentionPrunesOldPoints: with a 3 s retention, old points go, the
// newest stays, and what remains still reads back exactly.
func TestRetentionPrunesOldPoints(t *testing.T) {
	img := filepath.Join(t.TempDir(), "d.img")
	makeImage(t, img, 61, 16<<20)
	power := filepath.Join(t.TempDir(), "power")
	require.NoError(t, os.WriteFile(power, []byte("stopped\n"), 0o644))
	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "src")
	c.MustFerry("policies", "create", "short", "--rp-every", "1s", "--retention", "3s")
	c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--policy", "short", "--status", "cat "+power)
	first := c.WaitPoint("vm", 0, time.Minute)
	require.Eventually(t, func() bool {
		ps := c.Points("vm")
		return len(ps) > 0 && ps[0].ID > first.ID
	}, time.Minute, 200*time.Millisecond, "the first point was never pruned")
	ps := c.Points("vm")
	newest := ps[len(ps)-1]
	for _, p := range ps[:len(ps)-1] {
		require.Less(t, time.Since(p.Time), 3*time.Second+5*time.Second, "point %d outlived retention", p.ID)
	}
	dir := c.Export("vm", newest.ID)
	requireSameFile(t, img, filepath.Join(dir, "d.raw"))
}
