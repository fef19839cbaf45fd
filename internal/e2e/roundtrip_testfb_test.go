package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// fileSHA is a file's sha256, hex.
func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestFailbackTest: a machine re-protected with --test-dir replicates
// home; writes at the recovery site, then `failback --test` starts a copy
// of the home disks at home through the home (exec) driver, as vm-test
// with FERRY_TEST=1 and the clone's path (in the test directory), while
// nothing stops: the machine at the recovery site still runs, the home
// machine stays stopped, and the home disk and the recovery-site disk keep
// their bytes (sha256 before and after). The clone equals the test's own
// copy of the disk at the test's fresh point. The machine shows
// test-failed-back; a second test meanwhile is refused (a failback would clean it up first).
// `cleanup` stops the copy through the home driver and removes the clone,
// and the machine is reverse-protected again: a failback then brings every
// write home.
func TestFailbackTest(t *testing.T) {
	testenv.RequireRoot(t)
	const size = 32 << 20
	r := newRoundTrip(t, size)
	r.c.runJob(t, 0, "failover", "vm")
	r.c.runJob(t, 0, "commit", "vm", "--force")
	live := r.site.Hyp.Disks(t, "vm")[0]
	r.write(t, live, 100)

	testDir := filepath.Join(filepath.Dir(r.img), "fbtest") // the home disk's XFS: reflinks
	require.NoError(t, os.MkdirAll(testDir, 0o700))
	r.c.runJob(t, 0, "reprotect", "vm", "--stop-source", "--test-dir", testDir)
	r.requireMirror(t, r.img, "home disk after re-protect")
	r.requireState(t, "reverse-protected", "recovery", "reverse")

	// Writes at the recovery site after the re-protect: the test's fresh
	// point holds them, the home disk does not yet.
	r.write(t, live, 60)
	homeBefore, liveBefore := fileSHA(t, r.img), fileSHA(t, live)
	homeSet := filepath.Join(filepath.Dir(r.img), ".ferry-home", "vm", "home", "state.json")
	pointBefore := setPoint(t, homeSet)
	require.Equal(t, "stopped", r.homeHyp.State("vm"))
	require.Equal(t, "running", r.site.Hyp.State("vm"))

	j := r.c.runJob(t, 0, "failback", "vm", "--test")
	env := r.homeHyp.Env(t, "vm-test")
	require.Equal(t, "1", env["FERRY_TEST"], "the home driver was told it starts a test")
	require.Equal(t, "vm-test", env["FERRY_MACHINE"])
	disks := r.homeHyp.Disks(t, "vm-test")
	require.Len(t, disks, 1)
	require.True(t, strings.HasPrefix(disks[0], testDir+string(filepath.Separator)), "the test copy runs on a clone in the test directory, not on %s", disks[0])
	require.NotEqual(t, r.img, disks[0])
	r.requireMirror(t, disks[0], "the failback test's clone")
	require.Equal(t, "running", r.homeHyp.State("vm-test"))

	var notes []string
	for _, st := range j.Steps {
		notes = append(notes, st.Note)
	}
	require.Contains(t, strings.Join(notes, " "), "reflink clones of the home disks", "the test directory is on the home disk's XFS")
	// Reverse replication goes on during a test: the stager may have
	// moved the home disk to the test's point meanwhile (then it holds the
	// writer's copy); the test itself never writes it.
	if p := setPoint(t, homeSet); p == pointBefore {
		require.Equal(t, homeBefore, fileSHA(t, r.img), "the home disk was not written by the test")
	} else {
		r.requireMirror(t, r.img, "home disk staged by reverse replication during the test")
	}
	require.Equal(t, liveBefore, fileSHA(t, live), "the recovery-site disk was not written by the test")
	require.Equal(t, "stopped", r.homeHyp.State("vm"), "the home machine was not started")
	require.Equal(t, "running", r.site.Hyp.State("vm"), "the machine at the recovery site runs on")
	r.requireState(t, "test-failed-back", "recovery", "reverse")
	_, _, _, allowed := r.state(t)
	require.Contains(t, allowed, "cleanup")
	require.Contains(t, allowed, "failback", "a failback (a disaster) cleans the test up first (docs/drills.md)")
	r.refused(t, []string{"already running", "ferry cleanup vm"}, "failback", "vm", "--test")
	require.NotEmpty(t, j.ID)

	r.c.runJob(t, 0, "cleanup", "vm")
	require.Equal(t, "stopped", r.homeHyp.State("vm-test"), "cleanup stopped the test copy through the home driver")
	_, err := os.Stat(disks[0])
	require.ErrorIs(t, err, os.ErrNotExist, "cleanup removed the clone")
	left, err := os.ReadDir(filepath.Join(testDir, "vm"))
	require.NoError(t, err)
	require.Empty(t, left, "nothing of the test is left in the test directory")
	require.Equal(t, "running", r.site.Hyp.State("vm"))
	r.requireState(t, "reverse-protected", "recovery", "reverse")

	// Replication home went on: a failback brings every write home.
	r.write(t, live, 20)
	r.c.runJob(t, 0, "failback", "vm")
	r.requireMirror(t, r.img, "home disk after failback")
	r.requireState(t, "back-home", "home", "forward")
}

// TestFailbackTestRefusals: a failback test is refused, naming the reason
// and what to do and changing nothing, when the re-protect gave no test
// directory or the home driver has no start command; and a home disk that cannot be written in place (a VMDK) is
// refused at re-protect with the reason and both alternatives (--target to
// a new disk, a full copy), the home disk's bytes unchanged.
func TestFailbackTestRefusals(t *testing.T) {
	testenv.RequireRoot(t)
	qemuImg := testenv.RequireTool(t, "qemu-img")
	const size = 16 << 20
	r := newRoundTrip(t, size)

	// A second machine whose home disk is a VMDK (sparse, hosted).
	raw := filepath.Join(filepath.Dir(r.img), "seed.raw")
	makeImage(t, raw, 29, size)
	vmdk := filepath.Join(filepath.Dir(r.img), "vm2.vmdk")
	out, err := exec.Command(qemuImg, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse", raw, vmdk).CombinedOutput()
	require.NoError(t, err, "%s", out)
	r.c.MustFerry(append([]string{"protect", "vm2", "--agent", "home", "--disk", "d=" + vmdk, "--policy", "p", "--target", "dr"}, r.homeHyp.Flags()...)...)
	p := r.c.WaitPoint("vm2", 0, 3*time.Minute)
	r.site.waitStaged(t, "vm2", p.ID)

	r.c.runJob(t, 0, "failover", "vm")
	r.c.runJob(t, 0, "commit", "vm", "--force")
	r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	r.refused(t, []string{"test directory", "--test-dir"}, "failback", "vm", "--test")
	require.Equal(t, "absent", r.homeHyp.State("vm-test"), "nothing was started")

	// A third machine whose home driver has no start command.
	img3 := filepath.Join(filepath.Dir(r.img), "vm3.img")
	makeImage(t, img3, 31, size)
	var noStart []string
	for f := r.homeHyp.Flags(); len(f) >= 2; f = f[2:] {
		if f[0] != "--start" {
			noStart = append(noStart, f[0], f[1])
		}
	}
	r.c.MustFerry(append([]string{"protect", "vm3", "--agent", "home", "--disk", "d=" + img3, "--policy", "p", "--target", "dr"}, noStart...)...)
	p3 := r.c.WaitPoint("vm3", 0, 3*time.Minute)
	r.site.waitStaged(t, "vm3", p3.ID)
	r.c.runJob(t, 0, "failover", "vm3")
	r.c.runJob(t, 0, "commit", "vm3", "--force")
	r.c.runJob(t, 0, "reprotect", "vm3", "--test-dir", filepath.Join(filepath.Dir(r.img), "fbtest3"))
	res := r.c.Ferry("failback", "vm3", "--test")
	require.Equal(t, 1, res.Code, "%s %s", res.Stdout, res.Stderr)
	require.Contains(t, res.Stderr, "no start command")
	require.Contains(t, res.Stderr, "--start")
	require.Equal(t, "absent", r.homeHyp.State("vm3-test"), "nothing was started")

	r.c.runJob(t, 0, "failover", "vm2")
	r.c.runJob(t, 0, "commit", "vm2", "--force")
	before, err := os.ReadFile(vmdk)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(r.homeHyp.Dir, "vm2.state"), []byte("running\n"), 0o600))
	j := r.c.runJob(t, 3, "reprotect", "vm2", "--stop-source")
	require.Equal(t, "prerequisites", failedStep(j), "refused before anything is touched")
	require.Equal(t, "running", r.homeHyp.State("vm2"), "the refused re-protect did not stop the home machine")
	require.Contains(t, j.Error, "VMDK", "the refusal says why")
	require.Contains(t, j.Error, "--target", "the refusal names a new disk as the alternative")
	require.Contains(t, j.Error, "full copy", "the refusal names a full copy as the alternative")
	after, err := os.ReadFile(vmdk)
	require.NoError(t, err)
	require.True(t, bytes.Equal(before, after), "the refused re-protect left the VMDK home disk as it was")
	var m struct {
		State string `json:"state"`
	}
	r.c.JSON(&m, "machines", "show", "vm2")
	require.Equal(t, "committed", m.State)
}

// setPoint reads a disk set's point from its state.json.
func setPoint(t *testing.T, stateFile string) int64 {
	t.Helper()
	b, err := os.ReadFile(stateFile)
	require.NoError(t, err)
	var st struct {
		Point int64 `json:"point"`
	}
	require.NoError(t, json.Unmarshal(b, &st))
	return st.Point
}

// failedStep is the name of a job's failed step.
func failedStep(j Job) string {
	for _, st := range j.Steps {
		if st.State == "failed" {
			return st.Name
		}
	}
	return ""
}

// TestReprotectToNewTarget: `reprotect --target NEW` (a target on the
// home agent) replicates the machine home into a new disk set — a full
// copy staged from the points — and leaves the home disk as it was (its
// content is still kept as home-divergent-<job>); a failback then starts
// the machine from those disks through NEW's driver. The new disks equal
// the writer's own copy after the re-protect and after the failback; the
// old home disk keeps its bytes throughout. They are the machine's home
// from then on: writes there replicate forward after a re-protect, and a
// failover brings them to the recovery site.
func TestReprotectToNewTarget(t *testing.T) {
	testenv.RequireRoot(t)
	const size = 32 << 20
	r := newRoundTrip(t, size)
	r.c.runJob(t, 0, "failover", "vm")
	r.c.runJob(t, 0, "commit", "vm", "--force")
	live := r.site.Hyp.Disks(t, "vm")[0]
	r.write(t, live, 100)
	homeSHA := fileSHA(t, r.img)

	// The new target is on the home agent, its directory on the home
	// disk's XFS (reflink views once the machine runs there).
	nh := &Site{Name: "newhome", Dir: filepath.Join(filepath.Dir(r.img), "newhome"), Hyp: NewHypervisor(t), Agent: r.home}
	require.NoError(t, os.MkdirAll(nh.Dir, 0o700))
	r.c.MustFerry(append([]string{"targets", "add", nh.Name, "--agent", r.home.Name, "--dir", nh.Dir}, nh.Hyp.Flags()...)...)
	j := r.c.runJob(t, 0, "reprotect", "vm", "--stop-source", "--target", "newhome")
	r.requireState(t, "reverse-protected", "recovery", "reverse")
	require.Equal(t, homeSHA, fileSHA(t, r.img), "the home disk was not written")
	r.requireMirror(t, filepath.Join(nh.Dir, "vm", "staged", "d.raw"), "the new disk set after re-protect")
	var kept bool
	for _, p := range r.c.Points("vm") {
		kept = kept || p.Name == "home-divergent-"+j.ID
	}
	require.True(t, kept, "the home disk was kept as home-divergent-%s", j.ID)

	r.write(t, live, 50)
	r.c.runJob(t, 0, "failback", "vm")
	require.Equal(t, "running", nh.Hyp.State("vm"), "failback started the machine through the new target's driver")
	require.Equal(t, "stopped", r.site.Hyp.State("vm"))
	require.Equal(t, "stopped", r.homeHyp.State("vm"), "the old home machine was not started")
	disks := nh.Hyp.Disks(t, "vm")
	require.Len(t, disks, 1)
	require.True(t, strings.HasPrefix(disks[0], nh.Dir+string(filepath.Separator)), "%s is a disk of the new target", disks[0])
	r.requireMirror(t, disks[0], "the new home disk after failback")
	require.Equal(t, homeSHA, fileSHA(t, r.img), "the old home disk was not written")
	r.requireState(t, "back-home", "home", "forward")

	// The new disks are the machine's home now: writes there replicate
	// forward again, and a failover brings them to the recovery site.
	r.write(t, disks[0], 40)
	r.c.runJob(t, 0, "reprotect", "vm")
	r.requireState(t, "protected", "home", "forward")
	r.c.runJob(t, 0, "failover", "vm")
	r.requireMirror(t, r.site.Hyp.Disks(t, "vm")[0], "failed over from the new home disks")
}

// TestFailbackTestSurvivesControllerKills: kill -9 of the controller (a
// failpoint: the fault really happens) after the failback test's
// prerequisites (its fresh cycle then waits for the recovery agent to
// reconnect), after its clone step, then after its move step: each time
// the job finishes by itself after the restart, the clone equals the
// writer's copy (every write made before the test), the copy runs as
// vm-test with FERRY_TEST=1, and cleanup leaves nothing behind. Then a
// failback killed after its move-home finishes by itself.
func TestFailbackTestSurvivesControllerKills(t *testing.T) {
	testenv.RequireRoot(t)
	const size = 32 << 20
	r := newRoundTrip(t, size)
	r.c.runJob(t, 0, "failover", "vm")
	r.c.runJob(t, 0, "commit", "vm", "--force")
	live := r.site.Hyp.Disks(t, "vm")[0]
	testDir := filepath.Join(filepath.Dir(r.img), "fbtest")
	require.NoError(t, os.MkdirAll(testDir, 0o700))
	r.c.runJob(t, 0, "reprotect", "vm", "--stop-source", "--test-dir", testDir)

	// The failback test's steps: prerequisites, process, clone, move,
	// start-home. No other job runs meanwhile, so the N-th step done is
	// this job's.
	for _, fp := range []string{"job.step-done#1", "job.step-done#3", "job.step-done#4"} {
		r.write(t, live, 80)
		t.Setenv(failpointEnv, fp)
		r.c.Restart()
		res := r.c.Ferry("failback", "vm", "--test")
		require.Equal(t, 0, res.Code, res.Stderr)
		id := strings.TrimSpace(res.Stdout)
		select {
		case <-r.c.Proc.done:
		case <-time.After(2 * time.Minute):
			require.Fail(t, "the controller never reached failpoint "+fp)
		}
		require.Contains(t, r.c.Proc.Output(), "failpoint "+fp+": killing the controller")
		t.Setenv(failpointEnv, "")
		r.c.Restart()
		var j Job
		require.Eventually(t, func() bool {
			r.c.JSON(&j, "jobs", "show", id)
			return j.State != "running" && j.State != "queued"
		}, 3*time.Minute, 100*time.Millisecond)
		require.Equal(t, "succeeded", j.State, "%s: %s", fp, j.Error)
		require.Equal(t, "1", r.homeHyp.Env(t, "vm-test")["FERRY_TEST"])
		disks := r.homeHyp.Disks(t, "vm-test")
		require.Len(t, disks, 1)
		r.requireMirror(t, disks[0], "the clone after a kill at "+fp)
		r.requireState(t, "test-failed-back", "recovery", "reverse")

		r.c.runJob(t, 0, "cleanup", "vm")
		left, err := os.ReadDir(filepath.Join(testDir, "vm"))
		require.NoError(t, err)
		require.Empty(t, left, "cleanup after a kill at %s left nothing", fp)
		r.requireState(t, "reverse-protected", "recovery", "reverse")
	}

	// A failback killed after move-home (its steps: prerequisites,
	// stop-recovery, final-cycle, move-home, start-home): start-home, run
	// again after the restart, waits for the home agent to reconnect.
	r.write(t, live, 30)
	t.Setenv(failpointEnv, "job.step-done#4")
	r.c.Restart()
	require.Eventually(t, func() bool { // a planned failback needs the recovery site
		var agents []struct {
			Connected bool `json:"connected"`
		}
		r.c.JSON(&agents, "agents", "list")
		n := 0
		for _, a := range agents {
			if a.Connected {
				n++
			}
		}
		return n == len(agents)
	}, 2*time.Minute, 100*time.Millisecond, "the agents reconnect")
	res := r.c.Ferry("failback", "vm")
	require.Equal(t, 0, res.Code, res.Stderr)
	id := strings.TrimSpace(res.Stdout)
	select {
	case <-r.c.Proc.done:
	case <-time.After(2 * time.Minute):
		var j Job
		r.c.JSON(&j, "jobs", "show", id)
		require.Fail(t, "the controller never reached failpoint job.step-done#4", "job %s %s: %s %+v", id, j.State, j.Error, j.Steps)
	}
	require.Contains(t, r.c.Proc.Output(), "failpoint job.step-done#4: killing the controller")
	t.Setenv(failpointEnv, "")
	r.c.Restart()
	var j Job
	require.Eventually(t, func() bool {
		r.c.JSON(&j, "jobs", "show", id)
		return j.State != "running" && j.State != "queued"
	}, 3*time.Minute, 100*time.Millisecond)
	require.Equal(t, "succeeded", j.State, j.Error)
	r.requireMirror(t, r.img, "home disk after a failback killed after move-home")
	require.Equal(t, "running", r.homeHyp.State("vm"))
	r.requireState(t, "back-home", "home", "forward")
}
