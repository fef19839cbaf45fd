package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// TestFailbackWhoseHomeStartFailsIsUndone: a failback waits in its
// prerequisites for the home agent; meanwhile a second mutating job on
// the machine (another failback, an unprotect) is refused naming the
// first job, its kind and state, and how to wait for or cancel it, with
// exit 1 and nothing changed (machine state, jobs list). The home agent
// back, the failback stops the machine at the recovery site, takes the
// final cycle and moves the home disk to it; then the home driver's start
// writes the disk and fails (a machine that booted, wrote and crashed).
// Its status says stopped, so the failback is undone fully: what the start
// wrote is kept as the point home-divergent-<job>-start (it exports as the
// home disk was after the start), the home disk equals the final point
// again (the test's own copy, by sha256), the machine runs again at the
// recovery site and is reverse-protected. Once
// the home driver starts, the same failback brings it home with every
// write.
func TestFailbackWhoseHomeStartFailsIsUndone(t *testing.T) {
	testenv.RequireRoot(t)
	const size = 32 << 20
	r := newRoundTrip(t, size)
	live, _ := r.reverseProtected(t)
	r.write(t, live, 40) // the machine writes at the recovery site

	type listed struct {
		ID   string `json:"id"`
		Kind string `json:"kind"`
	}
	jobsList := func() []listed {
		var l []listed
		r.c.JSON(&l, "jobs", "list")
		return l
	}

	r.home.Proc.Kill()
	require.Eventually(t, func() bool { return !agentConnected(r.c, r.home.Name) }, time.Minute, 100*time.Millisecond)
	res := r.c.Ferry("failback", "vm")
	require.Equal(t, 0, res.Code, res.Stderr)
	first := strings.TrimSpace(res.Stdout)
	require.NotEmpty(t, first)
	before := jobsList()
	for _, args := range [][]string{{"failback", "vm"}, {"failback", "vm", "--unplanned"}, {"unprotect", "vm"}, {"failover", "vm", "--direction", "reverse"}} {
		r.refused(t, []string{
			fmt.Sprintf("machine vm is busy with job %s (failback, ", first),
			fmt.Sprintf("wait for it (ferry jobs watch %s) or cancel it (ferry cancel %s --force)", first, first),
		}, args...)
		require.Equal(t, before, jobsList(), "a refused %s records no job", strings.Join(args, " "))
	}

	// The home start writes the home disk, then fails.
	startWrites := filepath.Join(t.TempDir(), "start-writes")
	written := make([]byte, 64*4096)
	for i := range written {
		written[i] = byte(r.rng.Uint32())
	}
	require.NoError(t, os.WriteFile(startWrites, written, 0o600))
	r.homeHyp.RefuseStartAfter(t, "vm", fmt.Sprintf("dd if=%s of=%s bs=4096 count=64 seek=100 conv=notrunc 2>/dev/null", startWrites, r.img))
	afterStart := bytes.Clone(r.mirror)
	copy(afterStart[100*4096:], written)
	r.home.Start()
	var j Job
	require.Eventually(t, func() bool {
		r.c.JSON(&j, "jobs", "show", first)
		return j.State == "failed"
	}, 3*time.Minute, 200*time.Millisecond, "the failback never ended")
	require.Equal(t, "failed", j.step("start-home"), j.Error)
	require.Contains(t, j.Error, "refusing to start vm")
	notes := strings.Join(j.Machines[0].Notes, "\n")
	require.Contains(t, notes, "the home driver reports the machine stopped there: the failback is undone")
	r.requireMirror(t, r.img, "home disk after the undone failback")
	require.Contains(t, notes, "the home disks were moved back to point")
	// What the failed start wrote is kept: its point exports as the home
	// disk was after the start.
	require.Contains(t, notes, "what the start at home wrote is kept as point")
	var kept *Point
	for _, p := range r.c.Points("vm") {
		if p.Name == "home-divergent-"+first+"-start" {
			kept = &p
		}
	}
	require.NotNil(t, kept, "the failed start's writes are kept as home-divergent-%s-start", first)
	requireSameFileBytes(t, afterStart, filepath.Join(r.c.Export("vm", kept.ID), "d.raw"))
	r.requireState(t, "reverse-protected", "recovery", "reverse")
	require.Equal(t, "stopped", r.homeHyp.State("vm"))
	require.Equal(t, "running", r.site.Hyp.State("vm"), "the machine runs again at the recovery site")

	r.homeHyp.AllowStart(t, "vm")
	r.write(t, live, 40)
	r.c.runJob(t, 0, "failback", "vm")
	r.requireMirror(t, r.img, "home disk after the failback")
	r.requireState(t, "back-home", "home", "forward")
	require.Equal(t, "running", r.homeHyp.State("vm"))
}

// TestFailbackWhoseHomeStartMayRunStays: the home driver's start fails but
// its status then says running (the machine may run at home): the failback
// is not undone — restarting the copy at the recovery site would make two
// running machines. The machine stays failing-back, stopped at the
// recovery site, the job's notes name the status, and the home disk holds
// the final point.
func TestFailbackWhoseHomeStartMayRunStays(t *testing.T) {
	testenv.RequireRoot(t)
	const size = 32 << 20
	r := newRoundTrip(t, size)
	live, _ := r.reverseProtected(t)
	r.write(t, live, 40)

	r.homeHyp.RefuseStartAfter(t, "vm", fmt.Sprintf("echo running > %s/vm.state", r.homeHyp.Dir))
	j := r.c.runJob(t, 3, "failback", "vm")
	require.Equal(t, "failed", j.step("start-home"), j.Error)
	require.Contains(t, j.Error, "refusing to start vm")
	var all struct {
		Notes []string `json:"notes"`
	}
	r.c.JSON(&all, "jobs", "show", j.ID)
	require.Contains(t, strings.Join(all.Notes, "\n"), `its home driver reports it "running"); it stays failing-back for the administrator to decide`)
	require.NotContains(t, strings.Join(j.Machines[0].Notes, "\n"), "the failback is undone")
	st, _, _, _ := r.state(t)
	require.Equal(t, "failing-back", st)
	require.Equal(t, "running", r.homeHyp.State("vm"))
	require.Equal(t, "stopped", r.site.Hyp.State("vm"), "not restarted at the recovery site")
	r.requireMirror(t, r.img, "home disk at the final point")
}
