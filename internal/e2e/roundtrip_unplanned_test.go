package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// machineFence is the fence `machines show --json` reports.
type machineFence struct {
	State     string     `json:"state"`
	Job       string     `json:"job"`
	Target    string     `json:"target"`
	StoppedAt *time.Time `json:"stopped_at"`
	Point     int64      `json:"point"`
	Note      string     `json:"note"`
}

func (r *roundTrip) fence(t *testing.T) *machineFence {
	t.Helper()
	var m struct {
		Fence *machineFence `json:"fence"`
	}
	r.c.JSON(&m, "machines", "show", "vm")
	return m.Fence
}

// pointNamed returns the machine's point of that name.
func (r *roundTrip) pointNamed(t *testing.T, name string) Point {
	t.Helper()
	for _, p := range r.c.Points("vm") {
		if p.Name == name {
			return p
		}
	}
	require.Failf(t, "no such point", "vm has no point named %s: %v", name, r.c.Points("vm"))
	return Point{}
}

// agentConnected reports whether the controller lists the agent connected.
func agentConnected(c *Controller, name string) bool {
	var agents []struct {
		Name      string `json:"name"`
		Connected bool   `json:"connected"`
	}
	c.JSON(&agents, "agents", "list")
	for _, a := range agents {
		if a.Name == name {
			return a.Connected
		}
	}
	return false
}

// reverseProtected brings the round trip's machine to reverse-protected:
// failover, commit, writes at the recovery site, re-protect. It returns
// the recovery site's live disk and the first reverse point.
func (r *roundTrip) reverseProtected(t *testing.T) (string, int64) {
	t.Helper()
	r.c.runJob(t, 0, "failover", "vm")
	r.c.runJob(t, 0, "commit", "vm", "--force")
	live := r.site.Hyp.Disks(t, "vm")[0]
	r.write(t, live, 100)
	j := r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	r.requireMirror(t, r.img, "home disk after re-protect")
	r.requireState(t, "reverse-protected", "recovery", "reverse")
	require.Equal(t, "running", r.site.Hyp.State("vm"), "the machine runs at the recovery site")
	return live, j.Machines[0].PointID
}

// TestUnplannedFailbackToAnOlderPoint: with the machine replicating home
// and two reverse points P1 < P2 (the test keeps the disk's bytes at
// each), writes after P2 at the recovery site, `failback --point P1` puts
// the home disk at P1 exactly (unplanned: the later writes stay behind)
// and ends failed-back; change-point to P2 keeps the home writes made
// since as home-divergent-<job> (exported byte-exact) and puts the home
// disk at P2; commit → back-home; the forward re-protect keeps the
// recovery site's disks (which went on past P2) as recovery-divergent-<job>
// (byte-exact) before staging over them; a failover then runs on the
// home disk's bytes.
func TestUnplannedFailbackToAnOlderPoint(t *testing.T) {
	testenv.RequireRoot(t)
	const size = 32 << 20
	r := newRoundTrip(t, size)
	live, p1 := r.reverseProtected(t)
	atP1 := bytes.Clone(r.mirror)

	// A second reverse point: the recovery agent's first cycle after it
	// starts again reads the disk as it is now.
	r.write(t, live, 80)
	atP2 := bytes.Clone(r.mirror)
	r.site.Agent.Proc.Kill()
	r.site.Agent.Start()
	p2 := r.c.WaitPoint("vm", p1, 3*time.Minute).ID
	r.write(t, live, 60) // after P2: an unplanned failback loses them
	atRecovery := bytes.Clone(r.mirror)

	j := r.c.runJob(t, 0, "failback", "vm", "--point", fmt.Sprint(p1))
	require.Equal(t, p1, j.Machines[0].PointID)
	r.mirror = bytes.Clone(atP1)
	r.requireMirror(t, r.img, "home disk after failback --point P1")
	r.requireState(t, "failed-back", "home", "forward")
	require.Equal(t, "running", r.homeHyp.State("vm"), "the machine runs at home")
	require.Equal(t, "stopped", r.site.Hyp.State("vm"), "the reachable recovery site's copy was stopped")
	requireNotHeld(t, r.img, "the home disk after failback --point started the machine on it")
	_, _, _, allowed := r.state(t)
	require.Equal(t, []string{"commit", "change-point", "points export"}, allowed)
	r.refused(t, []string{"not committed", "ferry commit vm"}, "reprotect", "vm")

	// Writes at home, then change-point to P2.
	r.write(t, r.img, 40)
	homeWrites := bytes.Clone(r.mirror)
	j = r.c.runJob(t, 0, "change-point", "vm", "--point", fmt.Sprint(p2))
	r.mirror = bytes.Clone(atP2)
	r.requireMirror(t, r.img, "home disk after change-point to P2")
	r.requireState(t, "failed-back", "home", "forward")
	require.Equal(t, "running", r.homeHyp.State("vm"), "change-point started the machine at home again")
	requireNotHeld(t, r.img, "the home disk after change-point started the machine on it")
	kept := r.pointNamed(t, "home-divergent-"+j.ID)
	requireSameFileBytes(t, homeWrites, filepath.Join(r.c.Export("vm", kept.ID), "d.raw"))

	r.c.runJob(t, 0, "commit", "vm", "--force")
	r.requireState(t, "back-home", "home", "forward")

	// Forward again: the recovery disk went on past P2; it is kept, then
	// staged over (only differing blocks).
	r.write(t, r.img, 50)
	j = r.c.runJob(t, 0, "reprotect", "vm")
	r.requireState(t, "protected", "home", "forward")
	rd := r.pointNamed(t, "recovery-divergent-"+j.ID)
	requireSameFileBytes(t, atRecovery, filepath.Join(r.c.Export("vm", rd.ID), "d.raw"))

	r.c.runJob(t, 0, "failover", "vm")
	r.requireMirror(t, r.site.Hyp.Disks(t, "vm")[0], "failed over again after the unplanned round trip")
}

// TestFailbackWithRecoverySiteDown: with the recovery agent down, a
// failback (planned, or --point) is refused naming the site and
// --unplanned, and changes nothing (state, home disk). With --unplanned
// (given as failover --direction reverse) the machine comes home to the newest reverse point and the machine
// shows a pending fence, which outlives a kill -9 of the controller; the
// copy at the recovery site, still running, writes on. When that agent
// comes back it is fenced before anything else: the driver's state file
// says stopped before the first point of the machine that agent makes,
// and that point is recovery-divergent-<job>,
// exporting the recovery disk's bytes as the test kept them. Commit keeps
// that point, and the forward re-protect stages from it: a failover then
// runs on the home disk's bytes.
func TestFailbackWithRecoverySiteDown(t *testing.T) {
	testenv.RequireRoot(t)
	const size = 32 << 20
	r := newRoundTrip(t, size)
	live, p1 := r.reverseProtected(t)
	atP1 := bytes.Clone(r.mirror)

	r.site.Agent.Proc.Kill()
	require.Eventually(t, func() bool { return !agentConnected(r.c, r.site.Agent.Name) }, time.Minute, 100*time.Millisecond)
	homeBefore, err := os.ReadFile(r.img)
	require.NoError(t, err)
	npts := len(r.c.Points("vm"))
	for _, args := range [][]string{{"failback", "vm"}, {"failback", "vm", "--point", fmt.Sprint(p1)}} {
		r.refused(t, []string{"recovery site dr is unreachable", "--unplanned"}, args...)
		r.requireState(t, "reverse-protected", "recovery", "reverse")
		requireSameFileBytes(t, homeBefore, r.img)
		require.Len(t, r.c.Points("vm"), npts)
		require.Equal(t, "stopped", r.homeHyp.State("vm"))
	}

	// The copy at the recovery site runs on and writes.
	r.write(t, live, 70)
	atRecovery := bytes.Clone(r.mirror)
	before := r.c.Points("vm")
	// failover --direction reverse is failback --unplanned (CLI.md).
	j := r.c.runJob(t, 0, "failover", "vm", "--direction", "reverse")
	require.Equal(t, "failback-unplanned", j.Kind, "the unplanned failback's job")
	require.Equal(t, p1, j.Machines[0].PointID, "the newest point replicated home")
	r.mirror = atP1
	r.requireMirror(t, r.img, "home disk after failback --unplanned")
	r.requireState(t, "failed-back", "home", "forward")
	require.Equal(t, "running", r.homeHyp.State("vm"))
	require.Equal(t, "running", r.site.Hyp.State("vm"), "nothing reached the recovery site")
	require.Contains(t, strings.Join(j.Machines[0].Notes, " "), "fence pending")
	f := r.fence(t)
	require.NotNil(t, f, "machines show reports the fence")
	require.Equal(t, "pending", f.State)
	require.Equal(t, j.ID, f.Job)

	// The fence is in the catalog: it outlives a kill -9 of the controller.
	r.c.Restart()
	require.Eventually(t, func() bool { return agentConnected(r.c, r.home.Name) }, time.Minute, 100*time.Millisecond)
	f = r.fence(t)
	require.NotNil(t, f)
	require.Equal(t, "pending", f.State)
	r.site.Agent.Start()
	require.Eventually(t, func() bool {
		f = r.fence(t)
		return f != nil && f.State == "done"
	}, 3*time.Minute, 100*time.Millisecond, "the fence never completed: %+v", f)
	require.Equal(t, "stopped", r.site.Hyp.State("vm"), "the fence stopped the machine at the recovery site")
	stopped, err := os.Stat(filepath.Join(r.site.Hyp.Dir, "vm.state"))
	require.NoError(t, err)

	after := r.c.Points("vm")
	require.Len(t, after, len(before)+1, "the fence's point is the only point the recovery agent made")
	rd := after[len(after)-1]
	require.Equal(t, "recovery-divergent-"+j.ID, rd.Name)
	require.Equal(t, rd.ID, f.Point)
	require.False(t, rd.Time.Before(stopped.ModTime()), "the machine was stopped (%s) before its disks were read (%s)", stopped.ModTime(), rd.Time)
	requireSameFileBytes(t, atRecovery, filepath.Join(r.c.Export("vm", rd.ID), "d.raw"))
	r.requireState(t, "failed-back", "home", "forward")

	// Commit keeps the fence's point; the forward re-protect stages the
	// recovery disk from it, and a failover runs on the home disk's bytes.
	r.c.runJob(t, 0, "commit", "vm", "--force")
	r.pointNamed(t, "recovery-divergent-"+j.ID)
	r.write(t, r.img, 30)
	j = r.c.runJob(t, 0, "reprotect", "vm")
	require.Contains(t, strings.Join(j.Machines[0].Notes, " "), fmt.Sprintf("kept by the fence as point %d", rd.ID))
	r.requireState(t, "protected", "home", "forward")
	r.c.runJob(t, 0, "failover", "vm")
	r.requireMirror(t, r.site.Hyp.Disks(t, "vm")[0], "failed over after the fenced round trip")
}

// TestUnplannedFailbackThatFailsIsUndone: an unplanned failback with the
// recovery agent down whose home move is refused (the home set's state was
// taken away) fails in move-home and is undone: the machine is
// reverse-protected again, its fence dropped (machines show has none),
// nothing started at home and the home disk untouched. When the agent
// comes back nothing fences the copy there — it still runs and no
// recovery-divergent point appears — and a planned failback then brings
// the machine home with every write.
func TestUnplannedFailbackThatFailsIsUndone(t *testing.T) {
	testenv.RequireRoot(t)
	const size = 32 << 20
	r := newRoundTrip(t, size)
	live, _ := r.reverseProtected(t)
	homeBefore, err := os.ReadFile(r.img)
	require.NoError(t, err)

	r.site.Agent.Proc.Kill()
	require.Eventually(t, func() bool { return !agentConnected(r.c, r.site.Agent.Name) }, time.Minute, 100*time.Millisecond)
	state := filepath.Join(filepath.Dir(r.img), ".ferry-home", "vm", "home", "state.json")
	saved, err := os.ReadFile(state)
	require.NoError(t, err)
	require.NoError(t, os.Remove(state))
	j := r.c.runJob(t, 3, "failback", "vm", "--unplanned")
	require.Equal(t, "failed", j.State)
	require.Equal(t, "failed", j.step("move-home"), j.Error)
	require.Contains(t, j.Error, "keeps no home disk set")
	r.requireState(t, "reverse-protected", "recovery", "reverse")
	require.Nil(t, r.fence(t), "the failed job's fence is dropped")
	require.Equal(t, "stopped", r.homeHyp.State("vm"))
	requireSameFileBytes(t, homeBefore, r.img)

	require.NoError(t, os.WriteFile(state, saved, 0o600))
	r.write(t, live, 40) // the copy at the recovery site runs on
	npts := len(r.c.Points("vm"))
	r.site.Agent.Start()
	require.Eventually(t, func() bool { return agentConnected(r.c, r.site.Agent.Name) }, time.Minute, 100*time.Millisecond)
	// Its first reverse cycle after the restart is a point of the disk as
	// it runs: had a fence run first, the machine would be stopped.
	r.c.WaitPoint("vm", r.c.Points("vm")[npts-1].ID, 3*time.Minute)
	require.Equal(t, "running", r.site.Hyp.State("vm"), "no fence stopped the machine at the recovery site")
	for _, p := range r.c.Points("vm") {
		require.False(t, strings.HasPrefix(p.Name, "recovery-divergent-"), "no fence kept the recovery disks")
	}

	r.c.runJob(t, 0, "failback", "vm")
	r.requireMirror(t, r.img, "home disk after a planned failback")
	r.requireState(t, "back-home", "home", "forward")
}

// requireNotHeld checks from outside the agent that a disk a machine was
// started on is the machine's again: QEMU may open it for writing (the
// home agent holds a replica's disks with QEMU's own locks).
func requireNotHeld(t *testing.T, img, why string) {
	t.Helper()
	testenv.RequireTool(t, "qemu-io")
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "read 0 4096", img).CombinedOutput()
	require.NoError(t, err, "%s: qemu-io could not open it read-write:\n%s", why, out)
}
