package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPlanMoveRefusedEndsPartial: app2's staged disk at dr2 is immutable
// (chattr +i: every write fails, even as root), so its move is refused by
// the agent mid-stream; the unplanned plan failover ends partial, at once
// rather than at its deadline.
func TestPlanMoveRefusedEndsPartial(t *testing.T) {
	p := newPlanSetup(t, false)
	p.write(t, 9)
	path := p.site2.StagedPath("app2", "d")
	out, err := exec.Command("chattr", "+i", path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { exec.Command("chattr", "-i", path).Run() })
	start := time.Now()
	j := p.c.runPlanJob(t, 4, "failover", "--plan", "shop")
	t.Logf("app2: %s (after %s)", j.Machines[j.machine(t, "app2")].Error, time.Since(start))
	require.Equal(t, "failed", j.Machines[j.machine(t, "app2")].State)
	require.Equal(t, "failed-over", p.machineState(t, "app1"))
}

// TestPlanPlannedMoveRefusedRollsBack: with app2's staged disk immutable,
// a planned plan failover stops every source (group 2, then group 1),
// takes the final cycles and moves db and app1, then app2's move is
// refused: phase 1 fails and everything is rolled back — no live disk set
// left at either site, nothing started, every source running, every
// machine protected. Mended, the same planned failover succeeds and every
// disk equals its source.
func TestPlanPlannedMoveRefusedRollsBack(t *testing.T) {
	p := newPlanSetup(t, false)
	p.write(t, 11)
	kept := map[string]string{}
	for _, m := range planMachines {
		kept[m] = keepCopy(t, p.imgs[m])
	}
	path := p.site2.StagedPath("app2", "d")
	out, err := exec.Command("chattr", "+i", path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { exec.Command("chattr", "-i", path).Run() })

	j := p.c.runPlanJob(t, 3, "failover", "--plan", "shop", "--planned")
	require.Contains(t, strings.Join(j.Notes, "\n"), "phase 1 failed")
	require.Contains(t, j.Machines[j.machine(t, "app2")].Error, "operation not permitted")
	for _, m := range planMachines {
		require.Equal(t, "protected", p.machineState(t, m), "%s is back where it was", m)
		require.Equal(t, "running", p.homeHyp.State(m), "the source of %s runs again", m)
		require.Equal(t, "absent", p.siteOf(m).Hyp.State(m), "%s was never started", m)
		require.NoDirExists(t, filepath.Join(p.siteOf(m).Dir, m, "live"), "%s's disks were demoted", m)
	}
	for _, m := range []string{"db", "app1"} {
		require.NotZero(t, j.stepEnd(t, m, "move"), "%s moved before app2 failed, and was rolled back", m)
	}

	require.NoError(t, exec.Command("chattr", "-i", path).Run())
	j = p.c.runPlanJob(t, 0, "failover", "--plan", "shop", "--planned")
	for _, m := range planMachines {
		require.Equal(t, "failed-over", p.machineState(t, m))
		requireSameFile(t, kept[m], p.siteOf(m).Hyp.Disks(t, m)[0])
	}
}
