package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// machineDiskSizes is `machines show --json`'s disks: name → size in the
// newest point (0 before a point has the disk).
func machineDiskSizes(c *Controller, machine string) map[string]int64 {
	var m struct {
		Policy string `json:"policy"`
		Disks  []struct {
			Name string `json:"name"`
			Size int64  `json:"size"`
		} `json:"disks"`
	}
	c.JSON(&m, "machines", "show", machine)
	out := map[string]int64{}
	for _, d := range m.Disks {
		out[d.Name] = d.Size
	}
	return out
}

// TestMachinesUpdateChangesWithoutResync protects a machine with one disk
// of 32 MiB of random data, then, through a counting proxy between agent
// and controller:
//   - adds an 8 MiB disk of random data: the cycle that first has it sends
//     that disk, and of the first disk nothing (within 1 MiB of the new
//     disk's size; a resync or full copy of the first would be 32 MiB), and
//     no hash resync happens; the point exports both disks byte for byte;
//   - changes the policy (same block size): the next points store no data
//     and what crosses the proxy is control traffic only (< 256 KiB);
//   - removes the added disk: the next point has the first disk alone;
//   - sets a target: the newest point is staged there, nothing more is sent
//     from home;
//   - refuses a rename once the machine has points, saying why.
func TestMachinesUpdateChangesWithoutResync(t *testing.T) {
	const size1, size2 = 32 << 20, 8 << 20
	dir := t.TempDir()
	img1, img2 := filepath.Join(dir, "os.img"), filepath.Join(dir, "data.img")
	randomImage(t, img1, size1)
	randomImage(t, img2, size2)

	c := StartController(t)
	proxy := proxyTo(t, c.Addr)
	a := EnrollAgent(t, c, proxy.Addr(), "src")
	c.MustFerry("policies", "create", "fast", "--rp-every", "2s", "--block-size", "64KiB")
	c.MustFerry("policies", "create", "slower", "--rp-every", "3s", "--block-size", "64KiB")
	c.MustFerry("protect", "vm", "--agent", "src", "--disk", "os="+img1, "--policy", "fast")
	p1 := c.WaitPoint("vm", 0, 2*time.Minute)
	p1 = c.WaitPoint("vm", p1.ID, time.Minute) // an idle cycle after the initial sync
	resyncs := strings.Count(a.Proc.Output(), "hash resync")

	// Add a disk: it alone is sent.
	up0, _ := proxy.Bytes()
	out := c.MustFerry("machines", "update", "vm", "--add-disk", "data="+img2)
	require.Contains(t, out, "disk data ("+img2+") is added: the next cycle sends it alone")
	require.Eventually(t, func() bool { return machineDiskSizes(c, "vm")["data"] == size2 }, 2*time.Minute, 100*time.Millisecond,
		"no point has the added disk")
	up1, _ := proxy.Bytes()
	sent := up1 - up0
	t.Logf("adding an %d MiB disk to a machine with a %d MiB disk sent %d KiB", size2>>20, size1>>20, sent>>10)
	require.GreaterOrEqual(t, sent, int64(size2), "the new disk's random data crossed the proxy")
	require.Less(t, sent, int64(size2+1<<20), "only the new disk was sent (a resync or copy of the first is %d MiB)", size1>>20)
	require.Equal(t, resyncs, strings.Count(a.Proc.Output(), "hash resync"), "adding a disk made a hash resync")
	pts := c.Points("vm")
	last := pts[len(pts)-1]
	exported := c.Export("vm", last.ID)
	requireSameFile(t, img1, filepath.Join(exported, "os.raw"))
	requireSameFile(t, img2, filepath.Join(exported, "data.raw"))

	// Change the policy: no data is sent.
	up2, _ := proxy.Bytes()
	out = c.MustFerry("machines", "update", "vm", "--policy", "slower")
	require.Contains(t, out, "no data is sent for this change")
	after := c.WaitPoint("vm", last.ID, time.Minute)
	after = c.WaitPoint("vm", after.ID, time.Minute)
	up3, _ := proxy.Bytes()
	t.Logf("a policy change and two cycles after it: %d bytes through the proxy", up3-up2)
	require.Less(t, up3-up2, int64(256<<10), "a policy change sends no data")
	for _, p := range c.Points("vm") {
		if p.ID > last.ID {
			require.Zero(t, p.Bytes, "point %d after a policy change stored data", p.ID)
		}
	}
	var m struct {
		Policy string `json:"policy"`
	}
	c.JSON(&m, "machines", "show", "vm")
	require.Equal(t, "slower", m.Policy)

	// Remove the added disk: later points leave it out.
	out = c.MustFerry("machines", "update", "vm", "--remove-disk", "data")
	require.Contains(t, out, "disk data ("+img2+") is no longer replicated")
	require.Eventually(t, func() bool {
		_, has := machineDiskSizes(c, "vm")["data"]
		return !has
	}, time.Minute, 100*time.Millisecond)
	final := c.WaitPoint("vm", after.ID, time.Minute)
	final = c.WaitPoint("vm", final.ID, time.Minute) // made after the removal reached the agent
	exported = c.Export("vm", final.ID)
	requireSameFile(t, img1, filepath.Join(exported, "os.raw"))
	_, err := os.Stat(filepath.Join(exported, "data.raw"))
	require.True(t, os.IsNotExist(err), "the removed disk is still in point %d", final.ID)
	require.Equal(t, resyncs, strings.Count(a.Proc.Output(), "hash resync"), "the updates made a hash resync")

	// A new target: the newest point is staged there in full, and nothing
	// more crosses the home agent's link than the cycles' control traffic.
	site := AddSite(t, c, c.Addr, "dr")
	up4, _ := proxy.Bytes()
	out = c.MustFerry("machines", "update", "vm", "--target", "dr")
	require.Contains(t, out, "target dr: the newest point is staged there in full")
	staged := c.WaitPoint("vm", final.ID, time.Minute)
	site.waitStaged(t, "vm", staged.ID)
	up5, _ := proxy.Bytes()
	require.Less(t, up5-up4, int64(256<<10), "a target change sent data from home")

	// A rename once points exist is refused, saying why; nothing changes.
	r := c.Ferry("machines", "update", "vm", "--rename", "vm2")
	require.Equal(t, 1, r.Code, "stdout %s stderr %s", r.Stdout, r.Stderr)
	require.Contains(t, r.Stderr, "cannot be renamed")
	require.Contains(t, r.Stderr, "stored under its name")
	require.NotEmpty(t, c.Points("vm"))
}
