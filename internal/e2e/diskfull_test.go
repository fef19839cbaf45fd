package e2e

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// freeBytes is the space an unprivileged writer may still use under dir.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	require.NoError(t, syscall.Statfs(dir, &st))
	return int64(st.Bavail) * st.Bsize
}

func healthReason(t *testing.T, c *Controller, machine string) string {
	t.Helper()
	var ms []struct {
		Name         string `json:"name"`
		Health       string `json:"health"`
		HealthReason string `json:"health_reason"`
	}
	c.JSON(&ms, "machines", "list")
	for _, m := range ms {
		if m.Name == machine {
			return m.HealthReason
		}
	}
	t.Fatalf("machine %s not listed", machine)
	return ""
}

// TestDiskReservePausesIngest: the controller's data directory is a
// 256 MiB ext4 filesystem with a 48 MiB reserve. Filled until less than the
// reserve is free, ingest pauses: the agent's cycles are refused, no point
// is made, `machines list` says "controller disk nearly full", and admin
// writes still succeed. Once the filler is removed, replication resumes by
// itself and the next point is the image as the test wrote it.
func TestDiskReservePausesIngest(t *testing.T) {
	mnt := testenv.MountLoop(t, "ext4", 256<<20)
	const reserve = 48 << 20
	c := StartController(t, "--data", filepath.Join(mnt, "ferry"), "--reserve", "48MiB")
	a := EnrollAgent(t, c, c.Addr, "src")
	img := filepath.Join(t.TempDir(), "d.img")
	want := make([]byte, 16<<20)
	_, _ = rand.Read(want) // incompressible: every point costs space
	require.NoError(t, os.WriteFile(img, want, 0o600))
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "m", "--agent", "src", "--disk", "d="+img, "--policy", "fast")
	first := c.WaitPoint("m", 0, time.Minute)
	require.NotContains(t, healthReason(t, c, "m"), "disk nearly full")

	// Fill the filesystem until half the reserve is free.
	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	require.NoError(t, err)
	require.NoError(t, syscall.Fallocate(int(f.Fd()), 0, 0, freeBytes(t, mnt)-reserve/2))
	require.NoError(t, f.Close())
	free := freeBytes(t, mnt)
	t.Logf("filled: %d MiB free, reserve %d MiB", free>>20, reserve>>20)
	require.Less(t, free, int64(reserve), "the filesystem is really below the reserve")
	require.Greater(t, free, int64(0))

	// New data on the source: cycles must be refused, not written.
	_, _ = rand.Read(want[4<<20 : 12<<20])
	writeAt(t, img, 4<<20, want[4<<20:12<<20])
	require.Eventually(t, func() bool { return strings.Contains(healthReason(t, c, "m"), "controller disk nearly full") },
		30*time.Second, 200*time.Millisecond, "machines list never said the disk is nearly full")
	refused := regexp.MustCompile(`controller disk nearly full`)
	a.Proc.WaitOutput(refused, 30*time.Second)
	held := c.Points("m")
	// Two more refusals later, still no new point.
	n := len(refused.FindAllString(a.Proc.Output(), -1))
	require.Eventually(t, func() bool { return len(refused.FindAllString(a.Proc.Output(), -1)) >= n+2 },
		time.Minute, 100*time.Millisecond, "the agent keeps retrying")
	require.Equal(t, held, c.Points("m"), "no point while below the reserve")
	require.Greater(t, freeBytes(t, mnt), int64(0), "the reserve kept the filesystem from filling")

	// The catalog still works.
	c.MustFerry("policies", "create", "later", "--rp-every", "1m")
	c.MustFerry("tokens", "create")

	// Space comes back: replication resumes by itself.
	require.NoError(t, os.Remove(filler))
	last := held[len(held)-1]
	require.GreaterOrEqual(t, last.ID, first.ID)
	var p Point
	require.Eventually(t, func() bool {
		ps := c.Points("m")
		if len(ps) == 0 || ps[len(ps)-1].ID == last.ID {
			return false
		}
		p = ps[len(ps)-1]
		got, err := os.ReadFile(filepath.Join(c.Export("m", p.ID), "d.raw"))
		return err == nil && string(got) == string(want)
	}, 2*time.Minute, time.Second, "replication did not resume with the new data")
	t.Logf("point %d holds the data written while the disk was full", p.ID)
	require.NotContains(t, healthReason(t, c, "m"), "disk nearly full")
}
