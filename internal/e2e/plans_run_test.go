package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/internal/workload"
)

// planJob is a plan job as `jobs show --json` prints it.
type planJob struct {
	ID       string `json:"id"`
	Kind     string `json:"kind"`
	State    string `json:"state"`
	Error    string `json:"error"`
	Plan     string `json:"plan"`
	Notes    []string
	Waiting  *struct{ Step, Text string } `json:"waiting"`
	Machines []struct {
		Name    string   `json:"name"`
		State   string   `json:"state"`
		Group   int      `json:"group"`
		PointID int64    `json:"point_id"`
		Error   string   `json:"error"`
		Notes   []string `json:"notes"`
		Steps   []struct {
			Name    string    `json:"name"`
			State   string    `json:"state"`
			Started time.Time `json:"started"`
			Ended   time.Time `json:"ended"`
		} `json:"steps"`
	} `json:"machines"`
	Actions []struct {
		Group  int    `json:"group"`
		Phase  string `json:"phase"`
		State  string `json:"state"`
		Output string `json:"output"`
		Manual string `json:"manual"`
		Undone bool   `json:"undone"`
	} `json:"actions"`
	Checks []struct {
		Machine   string `json:"machine"`
		Group     int    `json:"group"`
		Skipped   string `json:"skipped"`
		Error     string `json:"error"`
		PointID   int64  `json:"point_id"`
		Target    string `json:"target"`
		FreeBytes int64  `json:"free_bytes"`
		NeedBytes int64  `json:"need_bytes"`
	} `json:"checks"`
}

func (j planJob) machine(t *testing.T, name string) int {
	t.Helper()
	for i, m := range j.Machines {
		if m.Name == name {
			return i
		}
	}
	require.Failf(t, "no machine", "job %s lists no machine %s", j.ID, name)
	return -1
}

// span is when a machine's own steps ran in a plan job: the first start
// and the last end.
func (j planJob) span(t *testing.T, name string) (time.Time, time.Time) {
	t.Helper()
	m := j.Machines[j.machine(t, name)]
	require.NotEmpty(t, m.Steps, "machine %s has no step times", name)
	return m.Steps[0].Started, m.Steps[len(m.Steps)-1].Ended
}

// planSetup: a controller, a home agent whose machines' source driver is
// a home hypervisor, three machines — db in group 1, app1 and app2 in
// group 2 — and a plan "shop" over them. db and app1 fail over to the
// recovery site dr; app2 to dr2, its own agent and hypervisor, which a
// test breaks.
type planSetup struct {
	c         *Controller
	home      *Agent
	homeHyp   *Hypervisor
	site      *Site // dr: db, app1
	site2     *Site // dr2: app2
	mnt       string
	imgs      map[string]string
	slowStart bool
}

var planMachines = []string{"db", "app1", "app2"}

const planDisk = 16 << 20

func newPlanSetup(t *testing.T, slowStart bool) *planSetup {
	t.Helper()
	testenv.RequireRoot(t)
	p := &planSetup{mnt: testenv.MountLoop(t, "xfs", 2<<30), imgs: map[string]string{}, slowStart: slowStart}
	p.c = StartController(t)
	p.home = EnrollAgent(t, p.c, p.c.Addr, "home", "--allow-plan-scripts")
	p.site, p.site2 = p.addSite(t, "dr"), p.addSite(t, "dr2")
	p.c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	p.homeHyp = NewHypervisor(t)
	for i, m := range planMachines {
		img := filepath.Join(p.mnt, m+".img")
		makeImage(t, img, uint64(40+i), planDisk)
		p.imgs[m] = img
		p.c.MustFerry(append([]string{"protect", m, "--agent", "home", "--disk", "d=" + img, "--policy", "p", "--target", p.siteOf(m).Name}, p.homeHyp.Flags()...)...)
		require.NoError(t, os.WriteFile(filepath.Join(p.homeHyp.Dir, m+".state"), []byte("running\n"), 0o600))
	}
	for _, m := range planMachines {
		pt := p.c.WaitPoint(m, 0, 3*time.Minute)
		p.siteOf(m).waitStaged(t, m, pt.ID)
	}
	p.c.MustFerry("plans", "create", "shop")
	p.c.MustFerry("plans", "add-group", "shop", "db")
	p.c.MustFerry("plans", "add-group", "shop", "app1", "app2")
	return p
}

// addSite enrols a recovery-site agent and adds its target, its directory
// on the XFS mount (reflink clones, as at a real site).
func (p *planSetup) addSite(t *testing.T, name string) *Site {
	t.Helper()
	a := EnrollAgent(t, p.c, p.c.Addr, name+"-agent")
	s := &Site{Name: name, Dir: filepath.Join(p.mnt, name), Hyp: NewHypervisor(t), Agent: a}
	require.NoError(t, os.MkdirAll(s.Dir, 0o700))
	d := s.Hyp.Driver()
	start := d.Start
	if p.slowStart {
		// A start that takes a second: the machines of a group overlap
		// visibly, and a group ends well before the next begins.
		start = "sleep 1; " + start
	}
	p.c.MustFerry("targets", "add", name, "--agent", a.Name, "--dir", s.Dir, "--start", start, "--stop", d.Stop, "--status", d.Status)
	return s
}

func (p *planSetup) siteOf(m string) *Site {
	if m == "app2" {
		return p.site2
	}
	return p.site
}

// write changes 2 % of every machine's disk at home (after its point).
func (p *planSetup) write(t *testing.T, seed uint64) {
	t.Helper()
	for _, m := range planMachines {
		require.NoError(t, workload.Apply(p.imgs[m], seed, workload.Delta(seed, planDisk, 0.02)))
	}
}

func (p *planSetup) machineState(t *testing.T, m string) string {
	t.Helper()
	var ms struct {
		State string `json:"state"`
	}
	p.c.JSON(&ms, "machines", "show", m)
	return ms.State
}

func (c *Controller) planJob(t *testing.T, id string) planJob {
	t.Helper()
	var j planJob
	c.JSON(&j, "jobs", "show", id)
	return j
}

// runPlanJob runs a job-starting command with --wait --json and requires
// its exit code.
func (c *Controller) runPlanJob(t *testing.T, wantCode int, args ...string) planJob {
	t.Helper()
	r := c.Ferry(append(args, "--wait", "--json")...)
	var j planJob
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &j), "ferry %s: %s %s", strings.Join(args, " "), r.Stdout, r.Stderr)
	require.Equal(t, wantCode, r.Code, "ferry %s → job %s %s: %s %s", strings.Join(args, " "), j.ID, j.State, j.Error, r.Stderr)
	return j
}

// commitPlan commits a plan's failover: the one place the commit verb's
// flags are spelled (commit is becoming --force only).
func (c *Controller) commitPlan(t *testing.T, plan string) planJob {
	t.Helper()
	return c.runPlanJob(t, 0, "commit", "--plan", plan, "--force")
}

// TestPlanFailoverOrderParallelActionsManual: a dry run lists each member
// with its point, target and free space and changes nothing; the real run
// then uses the points it listed: group 1 (db) moves, its post script runs
// on the controller with the FERRY_* context, the job waits on group 2's
// manual action until `jobs resume`, then app1 and app2 move in parallel
// (their step times overlap; both start after db ended) and the disks
// equal the sources.
func TestPlanFailoverOrderParallelActionsManual(t *testing.T) {
	p := newPlanSetup(t, true)
	ctl := t.TempDir()
	p.c.MustFerry("plans", "add-action", "shop", "--group", "1", "--post", "--script",
		fmt.Sprintf("env | grep '^FERRY_' | sort > %s/post1.env; echo db is up", ctl))
	p.c.MustFerry("plans", "add-action", "shop", "--group", "2", "--pre", "--manual", "check that db answers, then resume")
	p.c.MustFerry("plans", "add-action", "shop", "--group", "2", "--post", "--on", "home", "--script",
		fmt.Sprintf("env | grep '^FERRY_' | sort > %s/post2.env; echo on the home agent", ctl))

	// The dry run: nothing recorded, nothing changed at the site.
	jobsBefore := p.c.MustFerry("jobs", "list", "--json")
	files := append(p.site.Files(t), p.site2.Files(t)...)
	var dry planJob
	p.c.JSON(&dry, "failover", "--plan", "shop", "--point", "latest-processed", "--dry-run")
	require.Equal(t, "dry-run", dry.State)
	require.Len(t, dry.Checks, 3)
	listed := map[string]int64{}
	for i, c := range dry.Checks {
		require.Equal(t, planMachines[i], c.Machine, "members in group order")
		require.Empty(t, c.Error)
		require.Equal(t, p.siteOf(c.Machine).Name, c.Target)
		require.Greater(t, c.FreeBytes, c.NeedBytes, "the site has room for %s", c.Machine)
		require.NotZero(t, c.PointID)
		listed[c.Machine] = c.PointID
	}
	human := p.c.MustFerry("failover", "--plan", "shop", "--point", "latest-processed", "--dry-run")
	t.Logf("ferry failover --plan shop --dry-run:\n%s", human)
	require.Contains(t, human, "group 2")
	require.Contains(t, human, "manual: check that db answers")
	require.Equal(t, jobsBefore, p.c.MustFerry("jobs", "list", "--json"), "a dry run records no job")
	require.ElementsMatch(t, files, append(p.site.Files(t), p.site2.Files(t)...), "a dry run leaves the target directories as they were")
	for _, m := range planMachines {
		require.Equal(t, "protected", p.machineState(t, m))
	}

	id := strings.TrimSpace(p.c.MustFerry("failover", "--plan", "shop", "--point", "latest-processed"))
	var j planJob
	require.Eventually(t, func() bool { j = p.c.planJob(t, id); return j.State == "waiting" || jobEnded(j.State) }, 3*time.Minute, 100*time.Millisecond)
	require.Equal(t, "waiting", j.State, "job %s: %s", id, j.Error)
	require.Equal(t, "check that db answers, then resume", j.Waiting.Text)
	require.Equal(t, "running", p.site.Hyp.State("db"), "group 1 ran before the manual action")
	require.Equal(t, "absent", p.site.Hyp.State("app1"), "group 2 waits")
	require.Equal(t, "absent", p.site2.Hyp.State("app2"), "group 2 waits")
	require.Contains(t, p.c.MustFerry("jobs", "show", id), "check that db answers")
	env, err := os.ReadFile(filepath.Join(ctl, "post1.env"))
	require.NoError(t, err)
	for _, kv := range []string{"FERRY_JOB=" + id, "FERRY_KIND=failover", "FERRY_PLAN=shop", "FERRY_GROUP=1", "FERRY_PHASE=post"} {
		require.Contains(t, string(env), kv+"\n")
	}

	// The wait is durable: a controller killed and started again waits
	// again (group 1 is not moved again).
	p.c.Restart()
	require.Eventually(t, func() bool { j = p.c.planJob(t, id); return j.Waiting != nil || jobEnded(j.State) }, time.Minute, 100*time.Millisecond)
	require.Equal(t, "waiting", j.State, "job %s: %s", id, j.Error)
	require.Equal(t, "check that db answers, then resume", j.Waiting.Text)

	require.Contains(t, p.c.MustFerry("jobs", "resume", id), id)
	r := p.c.Ferry("jobs", "watch", id)
	require.Equal(t, 0, r.Code, "%s%s", r.Stdout, r.Stderr)
	j = p.c.planJob(t, id)
	require.Equal(t, "succeeded", j.State)
	require.Equal(t, "shop", j.Plan)
	_, dbEnd := j.span(t, "db")
	a1s, a1e := j.span(t, "app1")
	a2s, a2e := j.span(t, "app2")
	require.True(t, dbEnd.Before(a1s) && dbEnd.Before(a2s), "group 1 ended (%s) before group 2 began (%s, %s)", dbEnd, a1s, a2s)
	require.True(t, a1s.Before(a2e) && a2s.Before(a1e), "app1 [%s, %s] and app2 [%s, %s] overlap", a1s, a1e, a2s, a2e)
	require.Len(t, j.Actions, 3)
	require.Contains(t, j.Actions[0].Output, "db is up")
	require.Contains(t, j.Actions[2].Output, "on the home agent")
	env, err = os.ReadFile(filepath.Join(ctl, "post2.env"))
	require.NoError(t, err, "the script ran on the home agent (same host here)")
	for _, kv := range []string{"FERRY_JOB=" + id, "FERRY_PLAN=shop", "FERRY_GROUP=2", "FERRY_PHASE=post"} {
		require.Contains(t, string(env), kv+"\n")
	}
	for _, m := range planMachines {
		k := j.machine(t, m)
		require.Equal(t, listed[m], j.Machines[k].PointID, "%s failed over to the point the dry run listed", m)
		require.Equal(t, "failed-over", p.machineState(t, m))
		requireSameFile(t, p.imgs[m], p.siteOf(m).Hyp.Disks(t, m)[0])
	}
	denv := p.site2.Hyp.Env(t, "app2")
	require.Equal(t, "shop", denv["FERRY_PLAN"])
	require.Equal(t, "2", denv["FERRY_GROUP"])

	// A script on an agent that did not opt in is refused, by name.
	p.c.MustFerry("plans", "create", "db-only")
	p.c.MustFerry("plans", "add-group", "db-only", "db")
	r = p.c.Ferry("plans", "add-action", "db-only", "--group", "1", "--post", "--on", "dr-agent", "--script", "true")
	require.Equal(t, 1, r.Code)
	require.Contains(t, r.Stderr, "--allow-plan-scripts")
}

func jobEnded(state string) bool {
	switch state {
	case "succeeded", "partial", "failed", "cancelled":
		return true
	}
	return false
}

// TestPlanUnplannedPartialThenRestThenRoundTrip: with app2's target
// broken (its hypervisor refuses to start it), an unplanned plan failover runs to its end and ends partial
// (exit 4): db and app1 failed over, byte-exact against the copies the
// test kept; app2 failed and replicates again. Mended, `failover --plan`
// moves app2 and lists db and app1 as skipped. The plan then goes round:
// commit, reprotect, failback — every machine home, equal to its disk at
// the recovery site.
func TestPlanUnplannedPartialThenRestThenRoundTrip(t *testing.T) {
	p := newPlanSetup(t, false)
	p.write(t, 3)
	kept := map[string]string{}
	for _, m := range planMachines {
		kept[m] = keepCopy(t, p.imgs[m])
	}
	p.site2.Hyp.RefuseStart(t, "app2") // the hypervisor at dr2 refuses it

	j := p.c.runPlanJob(t, 4, "failover", "--plan", "shop", "--timeout", "20s")
	require.Equal(t, "partial", j.State)
	for _, m := range []string{"db", "app1"} {
		require.Empty(t, j.Machines[j.machine(t, m)].Error)
		require.Equal(t, "failed-over", p.machineState(t, m))
		requireSameFile(t, kept[m], p.site.Hyp.Disks(t, m)[0])
	}
	a2 := j.Machines[j.machine(t, "app2")]
	require.Equal(t, "failed", a2.State)
	require.NotEmpty(t, a2.Error)
	require.Equal(t, "protected", p.machineState(t, "app2"))
	require.NotEqual(t, "running", p.site2.Hyp.State("app2"), "the failed machine is not left running")

	p.site2.Hyp.AllowStart(t, "app2")
	j = p.c.runPlanJob(t, 0, "failover", "--plan", "shop")
	for _, m := range []string{"db", "app1"} {
		require.Equal(t, "skipped", j.Machines[j.machine(t, m)].State, "%s is at its recovery site already", m)
	}
	require.Contains(t, strings.Join(j.Notes, "\n"), "skipped members of plan shop: db, app1")
	require.Equal(t, "failed-over", p.machineState(t, "app2"))
	requireSameFile(t, kept["app2"], p.site2.Hyp.Disks(t, "app2")[0])

	// The round trip of the whole plan.
	p.c.commitPlan(t, "shop")
	live := map[string]string{}
	for i, m := range planMachines {
		live[m] = p.siteOf(m).Hyp.Disks(t, m)[0]
		require.NoError(t, workload.Apply(live[m], uint64(70+i), workload.Delta(uint64(70+i), planDisk, 0.01)))
	}
	p.c.runPlanJob(t, 0, "reprotect", "--plan", "shop", "--stop-source")
	for _, m := range planMachines {
		require.Equal(t, "reverse-protected", p.machineState(t, m))
	}
	j = p.c.runPlanJob(t, 0, "failback", "--plan", "shop")
	for _, m := range planMachines {
		require.Equal(t, "back-home", p.machineState(t, m))
		requireSameFile(t, live[m], p.imgs[m])
		require.Equal(t, "running", p.homeHyp.State(m))
	}
}

// TestPlanPlannedRollsBackInPhase1: a planned plan failover with app2's
// recovery site down fails in phase 1 (app2's prerequisites, retried
// until the job's deadline, after group 2's sources stopped) and rolls
// everything back: no machine started at the recovery site, every source
// running again, every machine protected.
func TestPlanPlannedRollsBackInPhase1(t *testing.T) {
	p := newPlanSetup(t, false)
	p.write(t, 5)
	staged := map[string]string{}
	for _, m := range planMachines {
		staged[m] = keepCopy(t, p.siteOf(m).StagedPath(m, "d"))
	}
	p.site2.Agent.Proc.Kill() // the site of app2 is down

	j := p.c.runPlanJob(t, 3, "failover", "--plan", "shop", "--planned", "--timeout", "20s")
	require.Equal(t, "failed", j.State)
	require.Contains(t, strings.Join(j.Notes, "\n"), "phase 1 failed")
	for _, m := range planMachines {
		require.Equal(t, "protected", p.machineState(t, m), "%s is back where it was", m)
		require.Equal(t, "running", p.homeHyp.State(m), "the source of %s runs again", m)
		require.Equal(t, "absent", p.siteOf(m).Hyp.State(m), "%s was never started at the recovery site", m)
		for _, s := range j.Machines[j.machine(t, m)].Steps {
			require.NotEqual(t, "start", s.Name, "phase 2 never began")
		}
	}
	// db was never touched (app1 replicates again with a resync, whose
	// point the stager may already be moving its staged disk to).
	requireSameFile(t, staged["db"], p.site.StagedPath("db", "d"))
	// Phase 1 stops the groups in reverse order: group 2 failed, so db
	// (group 1) was never touched; app1's source had stopped.
	require.Empty(t, j.Machines[j.machine(t, "db")].Steps, "group 1 never began")
	require.NotZero(t, j.stepEnd(t, "app1", "stop-source"))
	require.NotEmpty(t, j.Machines[j.machine(t, "app2")].Error)
}

// stepEnd is when a machine's named step ended.
func (j planJob) stepEnd(t *testing.T, machine, step string) time.Time {
	t.Helper()
	for _, s := range j.Machines[j.machine(t, machine)].Steps {
		if s.Name == step {
			return s.Ended
		}
	}
	require.Failf(t, "no step", "machine %s has no step %s", machine, step)
	return time.Time{}
}

// TestPlanPlannedPhase2FailureStops: a planned plan failover whose app2
// the hypervisor at dr2 refuses to start fails in phase 2 and rolls
// nothing back: db and app1 run at the recovery site, every disk there
// holds the source's final bytes, and the job names revert.
func TestPlanPlannedPhase2FailureStops(t *testing.T) {
	p := newPlanSetup(t, false)
	p.write(t, 7)
	kept := map[string]string{}
	for _, m := range planMachines {
		kept[m] = keepCopy(t, p.imgs[m])
	}
	p.site2.Hyp.RefuseStart(t, "app2")

	j := p.c.runPlanJob(t, 3, "failover", "--plan", "shop", "--planned")
	require.Equal(t, "failed", j.State)
	require.Contains(t, strings.Join(j.Notes, "\n"), "revert --plan shop")
	for _, m := range []string{"db", "app1"} {
		require.Equal(t, "failed-over", p.machineState(t, m))
		require.Equal(t, "running", p.siteOf(m).Hyp.State(m))
		requireSameFile(t, kept[m], p.siteOf(m).Hyp.Disks(t, m)[0])
		require.Equal(t, "stopped", p.homeHyp.State(m), "%s was not rolled back", m)
	}
	require.NotEmpty(t, j.Machines[j.machine(t, "app2")].Error)
	require.NotEqual(t, "running", p.site2.Hyp.State("app2"))
}

// TestPlanCancelWhileWaitingUndoes: cancelling a plan job that waits on
// a manual action rolls it back: group 1's machine is stopped at the
// recovery site and replicates again, and the undo script of the action
// that ran runs (with the FERRY_* context).
func TestPlanCancelWhileWaitingUndoes(t *testing.T) {
	p := newPlanSetup(t, false)
	ctl := t.TempDir()
	p.c.MustFerry("plans", "add-action", "shop", "--group", "1", "--post", "--script", "touch "+filepath.Join(ctl, "done"),
		"--undo", fmt.Sprintf("echo \"$FERRY_GROUP $FERRY_PHASE\" > %s/undone", ctl))
	p.c.MustFerry("plans", "add-action", "shop", "--group", "2", "--pre", "--manual", "stop here")
	id := strings.TrimSpace(p.c.MustFerry("failover", "--plan", "shop"))
	var j planJob
	require.Eventually(t, func() bool { j = p.c.planJob(t, id); return j.State == "waiting" || jobEnded(j.State) }, 3*time.Minute, 100*time.Millisecond)
	require.Equal(t, "waiting", j.State, "job %s: %s", id, j.Error)
	require.FileExists(t, filepath.Join(ctl, "done"))
	require.Equal(t, "running", p.site.Hyp.State("db"))

	p.c.MustFerry("cancel", id, "--force")
	require.Eventually(t, func() bool { j = p.c.planJob(t, id); return jobEnded(j.State) }, 3*time.Minute, 100*time.Millisecond)
	require.Equal(t, "cancelled", j.State, "%s", j.Error)
	undone, err := os.ReadFile(filepath.Join(ctl, "undone"))
	require.NoError(t, err, "the undo script ran")
	require.Equal(t, "1 post\n", string(undone))
	require.True(t, j.Actions[0].Undone)
	require.Equal(t, "stopped", p.site.Hyp.State("db"))
	for _, m := range planMachines {
		require.Equal(t, "protected", p.machineState(t, m))
	}
}

// TestPlanRevertKeepsEachRecoveryWriteAndReturnsHome: a plan failover, then
// writes at the recovery sites, then `revert --plan`: every member runs at
// home again on its unchanged home disk, and each keeps what it wrote at
// its recovery site as a named point that exports byte-exact. Two members
// share one recovery agent, so the revert of one follows config pushes
// that left the others out (the home agent no longer knows them).
func TestPlanRevertKeepsEachRecoveryWriteAndReturnsHome(t *testing.T) {
	p := newPlanSetup(t, false)
	p.write(t, 5)
	home := map[string]string{}
	for _, m := range planMachines {
		home[m] = keepCopy(t, p.imgs[m])
	}
	p.c.runPlanJob(t, 0, "failover", "--plan", "shop", "--shutdown-source")
	written := map[string][]byte{}
	for i, m := range planMachines {
		require.Equal(t, "failed-over", p.machineState(t, m))
		live := p.siteOf(m).Hyp.Disks(t, m)[0]
		require.NoError(t, workload.Apply(live, uint64(90+i), workload.Delta(uint64(90+i), planDisk, 0.03)))
		b, err := os.ReadFile(live)
		require.NoError(t, err)
		written[m] = b
	}

	j := p.c.runPlanJob(t, 0, "revert", "--plan", "shop")
	for _, m := range planMachines {
		require.Equal(t, "protected", p.machineState(t, m))
		require.Equal(t, "running", p.homeHyp.State(m), "%s runs at home again", m)
		require.NotEqual(t, "running", p.siteOf(m).Hyp.State(m), "%s still runs at its recovery site", m)
		requireSameFile(t, home[m], p.imgs[m]) // neither failover nor revert wrote the home disk
		var kept *Point
		for _, pt := range p.c.Points(m) {
			if pt.Name == "target-writes-"+j.ID {
				kept = &pt
			}
		}
		require.NotNil(t, kept, "%s has no point named target-writes-%s", m, j.ID)
		got, err := os.ReadFile(filepath.Join(p.c.Export(m, kept.ID), "d.raw"))
		require.NoError(t, err)
		require.True(t, bytes.Equal(written[m], got), "%s: the kept point differs from its recovery-site disk", m)
	}
}
