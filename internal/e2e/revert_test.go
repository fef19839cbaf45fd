package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/workload"
)

// TestRevertKeepsRecoveryWritesAndReturnsHome: a machine fails over
// (its source shut down through its driver), writes at the recovery site,
// and is reverted: it stops there, the writes made there are kept as a
// named point that exports byte for byte as the disk the test read before
// the revert, it starts at home through its source driver on home disks
// the failover never touched, and replicates from home again — its next
// point is the home disk, not the recovery site's — while the recovery
// site's disks become the staged replica of that point. A second revert is
// refused by the lifecycle table.
func TestRevertKeepsRecoveryWritesAndReturnsHome(t *testing.T) {
	f := newFailoverSetup(t, "--rp-every", "1h")
	const size = 32 << 20
	power := filepath.Join(t.TempDir(), "power") // the home machine's power state
	require.NoError(t, os.WriteFile(power, []byte("running\n"), 0o644))
	img, p1 := f.protect(t, "app", size,
		"--stop", "echo stopped > "+power, "--start", "echo running > "+power, "--status", "cat "+power)
	require.NoError(t, workload.Apply(img, 3, workload.Delta(3, size, 0.02)))

	j := f.c.runJob(t, 0, "failover", "app", "--shutdown-source")
	require.Greater(t, j.Machines[0].PointID, p1.ID)
	requirePower(t, power, "stopped")
	home := keepCopy(t, img) // what the home disk holds: a failover never writes it

	live := f.site.Hyp.Disks(t, "app")[0]
	require.NoError(t, workload.Apply(live, 8, workload.Delta(8, size, 0.03))) // the failed-over machine writes
	written, err := os.ReadFile(live)
	require.NoError(t, err)

	j = f.c.runJob(t, 0, "revert", "app")
	for _, s := range []string{"prerequisites", "stop-target", "keep-writes", "start-home", "release-target", "protected", "home-cycle"} {
		require.Equal(t, "succeeded", j.step(s), "step %s of %s", s, j.ID)
	}
	requirePower(t, power, "running") // started at home through the source driver
	require.Equal(t, "stopped", f.site.Hyp.State("app"), "the machine still runs at the recovery site")

	var kept *Point
	for _, p := range f.c.Points("app") {
		if p.Name == "target-writes-"+j.ID {
			kept = &p
		}
	}
	require.NotNil(t, kept, "no point named target-writes-%s", j.ID)
	got, err := os.ReadFile(filepath.Join(f.c.Export("app", kept.ID), "d.raw"))
	require.NoError(t, err)
	require.True(t, string(written) == string(got), "the kept point differs from the recovery site's disk before the revert")
	requireSameFile(t, home, img) // the revert did not write the home disk either

	var m struct {
		State      string   `json:"state"`
		ActiveSite string   `json:"active_site"`
		Allowed    []string `json:"allowed_actions"`
	}
	f.c.JSON(&m, "machines", "show", "app")
	require.Equal(t, "protected", m.State)
	require.Equal(t, "home", m.ActiveSite)
	require.Contains(t, m.Allowed, "failover")

	// Replication runs from home again: the next point is the home disk.
	next := f.c.WaitPoint("app", kept.ID, time.Minute)
	requireSameFile(t, home, filepath.Join(f.c.Export("app", next.ID), "d.raw"))
	f.site.waitStaged(t, "app", next.ID)
	requireSameFile(t, home, f.site.StagedPath("app", "d"))

	r := f.c.Ferry("revert", "app")
	require.Equal(t, 1, r.Code, r.Stdout)
	require.Contains(t, r.Stderr, "revert is not possible: the machine was never failed over")
}

func requirePower(t *testing.T, file, want string) {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Equal(t, want, strings.TrimSpace(string(b)), "the home machine's power state")
}
