package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestDrillScheduledExecTarget: the scheduler runs a due drill by itself
// on an exec target (up once started; the probe runs on the controller
// with FERRY_*), it passes, cleans up and verifies its point; a drill
// whose probe fails degrades health with the reason and verifies nothing.
// Bad drills are refused with the reason. A failover of a machine under a
// plain test failover cleans the test up, notes it, and fails over.
func TestDrillScheduledExecTarget(t *testing.T) {
	f := newFailoverSetup(t, "--rp-every", "1h")
	f.protect(t, "m", 8<<20)

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--machine", "m", "--every", "10s"}, "at most once a minute"},
		{[]string{"--plan", "p", "--every", "1h"}, "not available yet"},
		{[]string{"--machine", "m", "--plan", "p", "--every", "1h"}, "not both"},
	} {
		r := f.c.Ferry(append([]string{"drills", "create", "x"}, c.args...)...)
		require.NotEqual(t, 0, r.Code, "%v accepted", c.args)
		require.Contains(t, r.Stderr, c.want, "%v", c.args)
	}
	r := f.c.Ferry("drills", "create", "x", "--machine", "ghost", "--every", "1h")
	require.NotEqual(t, 0, r.Code)
	require.Contains(t, r.Stderr, "ghost")

	probe := `test "$FERRY_TEST" = 1 && test "$FERRY_MACHINE" = m && test "$FERRY_DRILL" = sched && echo "probed point $FERRY_POINT"`
	f.c.MustFerry("drills", "create", "sched", "--machine", "m", "--every", "1m", "--probe", probe)
	var run drillRun
	require.Eventually(t, func() bool {
		var ds []struct {
			LastRun *drillRun `json:"last_run"`
		}
		f.c.JSON(&ds, "drills", "list")
		if len(ds) == 1 && ds[0].LastRun != nil && ds[0].LastRun.Result != "running" {
			run = *ds[0].LastRun
			return true
		}
		return false
	}, 3*time.Minute, time.Second, "the scheduler runs the drill a minute after its creation")
	require.Equal(t, "passed", run.Result, "%+v", run)
	require.Contains(t, run.ProbeOutput, "probed point ")
	require.NotEqual(t, "running", f.site.Hyp.State("m-test"), "the drill cleaned up")
	var ps []pointV
	f.c.JSON(&ps, "points", "list", "m")
	verified := 0
	for _, p := range ps {
		if p.Verified {
			verified++
			require.Equal(t, run.Point, p.ID)
		}
	}
	require.Equal(t, 1, verified)
	f.c.MustFerry("drills", "delete", "sched")

	f.c.MustFerry("drills", "create", "bad", "--machine", "m", "--every", "24h", "--probe", "echo no service; exit 7")
	r = f.c.Ferry("drills", "run", "bad", "--json")
	require.Equal(t, 3, r.Code, r.Stdout+r.Stderr)
	require.Contains(t, r.Stdout, "the probe exited 7")
	var m []struct {
		Health       string `json:"health"`
		HealthReason string `json:"health_reason"`
	}
	f.c.JSON(&m, "machines", "list")
	require.Equal(t, "degraded", m[0].Health)
	require.Contains(t, m[0].HealthReason, "drill bad failed on point")

	// A disaster beats a test failover.
	f.c.runJob(t, 0, "failover", "m", "--test")
	require.Equal(t, "running", f.site.Hyp.State("m-test"))
	j := f.c.runJob(t, 0, "failover", "m", "--point", "latest-verified")
	require.Equal(t, run.Point, j.Machines[0].PointID)
	require.Contains(t, strings.Join(j.Machines[0].Notes, "\n"), "a test of m was running (test-failed-over)")
	require.NotEqual(t, "running", f.site.Hyp.State("m-test"))
	require.Equal(t, "running", f.site.Hyp.State("m"))
}
