package e2e

import (
	"crypto/rand"
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

// Job is a job as `jobs show --json` prints it.
type Job struct {
	ID    string `json:"id"`
	Kind  string `json:"kind"`
	State string `json:"state"`
	Error string `json:"error"`
	Steps []struct {
		Name       string `json:"name"`
		State      string `json:"state"`
		Note       string `json:"note"`
		BytesDone  int64  `json:"bytes_done"`
		BytesTotal int64  `json:"bytes_total"`
	} `json:"steps"`
	Machines []struct {
		Name    string   `json:"name"`
		State   string   `json:"state"`
		PointID int64    `json:"point_id"`
		Error   string   `json:"error"`
		Notes   []string `json:"notes"`
	} `json:"machines"`
}

func (j Job) step(name string) string {
	for _, s := range j.Steps {
		if s.Name == name {
			return s.State
		}
	}
	return "absent"
}

// runJob runs a job-starting command with --wait --json and returns the job.
func (c *Controller) runJob(t *testing.T, wantCode int, args ...string) Job {
	t.Helper()
	r := c.Ferry(append(args, "--wait", "--json")...)
	var j Job
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &j), "ferry %s: %s %s", strings.Join(args, " "), r.Stdout, r.Stderr)
	require.Equal(t, wantCode, r.Code, "ferry %s → job %s %s: %s %s", strings.Join(args, " "), j.ID, j.State, j.Error, r.Stderr)
	return j
}

// waitStaged waits until a machine's staged replica holds point id or a
// newer one.
func (s *Site) waitStaged(t *testing.T, machine string, point int64) {
	t.Helper()
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(filepath.Join(s.Dir, machine, "staged", "state.json"))
		if err != nil {
			return false
		}
		var st struct {
			Point    int64 `json:"point"`
			MovingTo int64 `json:"moving_to"`
		}
		return json.Unmarshal(b, &st) == nil && st.Point >= point && st.MovingTo == 0
	}, 3*time.Minute, 100*time.Millisecond, "machine %s never staged at point %d", machine, point)
}

// failoverSetup: a controller, a source agent, a recovery site, a policy
// and an XFS mount for source images (reflink views: crash-consistent).
type failoverSetup struct {
	c    *Controller
	src  *Agent
	site *Site
	mnt  string
}

func newFailoverSetup(t *testing.T, policyArgs ...string) *failoverSetup {
	t.Helper()
	f := &failoverSetup{mnt: testenv.MountLoop(t, "xfs", 4<<30)}
	f.c = StartController(t)
	f.src = EnrollAgent(t, f.c, f.c.Addr, "src")
	f.site = AddSite(t, f.c, f.c.Addr, "dr")
	f.c.MustFerry(append([]string{"policies", "create", "p"}, policyArgs...)...)
	return f
}

// protect makes an image and protects it with the site as target; it
// returns the image path and the first point, staged.
func (f *failoverSetup) protect(t *testing.T, machine string, size int64, extra ...string) (string, Point) {
	t.Helper()
	img := filepath.Join(f.mnt, machine+".img")
	makeImage(t, img, uint64(len(machine))*7+3, size)
	f.c.MustFerry(append([]string{"protect", machine, "--agent", "src", "--disk", "d=" + img, "--policy", "p", "--target", "dr"}, extra...)...)
	p := f.c.WaitPoint(machine, 0, 3*time.Minute)
	f.site.waitStaged(t, machine, p.ID)
	return img, p
}

// TestFailoverLatestAndLatestProcessed: writes made after the newest point
// with the source reachable are in the failed-over disks with `latest`
// (a fresh cycle), and not with `latest-processed`, whose process step is
// skipped.
func TestFailoverLatestAndLatestProcessed(t *testing.T) {
	f := newFailoverSetup(t, "--rp-every", "1h")
	const size = 32 << 20
	img1, _ := f.protect(t, "m1", size)
	img2, p2 := f.protect(t, "m2", size)
	before2 := keepCopy(t, img2) // the source at p2: nothing wrote to it since
	for _, img := range []string{img1, img2} {
		require.NoError(t, workload.Apply(img, 9, workload.Delta(9, size, 0.02)))
	}

	j := f.c.runJob(t, 0, "failover", "m1")
	require.Equal(t, "succeeded", j.step("process"))
	require.Contains(t, strings.Join(j.Machines[0].Notes, " "), "fresh cycle")
	disks := f.site.Hyp.Disks(t, "m1")
	require.Len(t, disks, 1)
	requireSameFile(t, img1, disks[0])
	require.Equal(t, "running", f.site.Hyp.State("m1"))
	env := f.site.Hyp.Env(t, "m1")
	require.Equal(t, "0", env["FERRY_TEST"])
	require.Equal(t, j.ID, env["FERRY_JOB"])
	require.Equal(t, fmt.Sprint(j.Machines[0].PointID), env["FERRY_POINT"])

	j = f.c.runJob(t, 0, "failover", "m2", "--point", "latest-processed")
	require.Equal(t, "skipped", j.step("process"), "latest-processed skips processing")
	require.Equal(t, p2.ID, j.Machines[0].PointID)
	requireSameFile(t, before2, f.site.Hyp.Disks(t, "m2")[0])

	var m struct {
		State      string `json:"state"`
		ActiveSite string `json:"active_site"`
		Disks      []struct {
			TargetPath string `json:"target_path"`
		} `json:"disks"`
	}
	f.c.JSON(&m, "machines", "show", "m1")
	require.Equal(t, "failed-over", m.State)
	require.Equal(t, "recovery", m.ActiveSite)
	require.Equal(t, disks[0], m.Disks[0].TargetPath)
	r := f.c.Ferry("failover", "m1")
	require.Equal(t, 1, r.Code, "a failed-over machine cannot fail over again")
}

// TestFailoverWithSourceKilledMidCycle: the source agent dies in the middle
// of a cycle; `latest` uses the newest point — never the incomplete
// cycle's blocks — and the job says the source was unreachable.
func TestFailoverWithSourceKilledMidCycle(t *testing.T) {
	mnt := testenv.MountLoop(t, "xfs", 2<<30)
	c := StartController(t)
	proxy := proxyTo(t, c.Addr)
	src := EnrollAgent(t, c, proxy.Addr(), "src")
	site := AddSite(t, c, c.Addr, "dr")
	c.MustFerry("policies", "create", "p", "--rp-every", "1s", "--bandwidth", "8MiB/s")
	const size = 128 << 20
	img := filepath.Join(mnt, "m.img")
	makeImage(t, img, 5, size)
	c.MustFerry("protect", "m", "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", "dr")
	p := c.WaitPoint("m", 0, 3*time.Minute)
	site.waitStaged(t, "m", p.ID)
	up0, _ := proxy.Bytes()
	// A big change, kept by the test: a cycle that takes seconds at 8 MiB/s.
	before, err := os.ReadFile(img)
	require.NoError(t, err)
	after := append([]byte(nil), before...)
	_, err = rand.Read(after[:48<<20])
	require.NoError(t, err)
	const chunk = 4 << 20
	writeInChunks(t, img, after[:48<<20], chunk)
	require.Eventually(t, func() bool { up, _ := proxy.Bytes(); return up > up0+16<<20 }, time.Minute, 20*time.Millisecond)
	src.Proc.Kill() // mid-cycle: some blocks of the cycle are already stored
	listed := c.Points("m")
	newest := listed[len(listed)-1]

	j := c.runJob(t, 0, "failover", "m")
	require.Equal(t, newest.ID, j.Machines[0].PointID, "the newest complete point")
	require.Contains(t, strings.Join(j.Machines[0].Notes, " "), "unreachable")
	// The point's view saw the rewrite up to some chunk (each WriteAt is
	// atomic against the reflink view): the disk is exactly that state.
	n := requireChunkPrefix(t, site.Hyp.Disks(t, "m")[0], before, after, chunk)
	t.Logf("the failed-over disk holds the first %d of %d rewritten chunks", n, 48<<20/chunk)
}

// TestPlannedFailoverLosesNothing: a writer runs until the source driver
// stops it; the planned failover's disks equal the source's after the
// stop — zero bytes lost.
func TestPlannedFailoverLosesNothing(t *testing.T) {
	f := newFailoverSetup(t, "--rp-every", "1s")
	ctl := t.TempDir()
	stop, stopped := filepath.Join(ctl, "stop"), filepath.Join(ctl, "stopped")
	const size = 64 << 20
	img, _ := f.protect(t, "db", size,
		"--stop", fmt.Sprintf("touch %s; while [ ! -f %s ]; do sleep 0.02; done", stop, stopped),
		"--start", fmt.Sprintf("rm -f %s %s", stop, stopped),
		"--status", fmt.Sprintf("[ -f %s ] && echo stopped || echo running", stopped))
	done := make(chan int)
	go func() { // the machine: writes until told to stop, then powers off
		fh, err := os.OpenFile(img, os.O_WRONLY, 0)
		if err != nil {
			close(done)
			return
		}
		buf := make([]byte, workload.WriteSize)
		n := 0
		for seq := 0; ; seq++ {
			if _, err := os.Stat(stop); err == nil {
				break
			}
			workload.Content(buf, 77, seq)
			fh.WriteAt(buf, int64(seq*7919%(size/workload.WriteSize))*workload.WriteSize)
			n++
		}
		fh.Close()
		os.WriteFile(stopped, nil, 0o644)
		done <- n
	}()
	time.Sleep(2 * time.Second) // a few cycles while the machine writes
	j := f.c.runJob(t, 0, "failover", "db", "--planned")
	n := <-done
	t.Logf("the source made %d writes before it was stopped", n)
	require.Greater(t, n, 0)
	require.Equal(t, "succeeded", j.step("final-cycle"))
	requireSameFile(t, img, f.site.Hyp.Disks(t, "db")[0])
}

// TestTestFailoverWhileReplicating: new points keep arriving during a test
// failover; the test machine starts isolated (FERRY_TEST=1) on a clone;
// after cleanup the recovery site holds the same files as before.
func TestTestFailoverWhileReplicating(t *testing.T) {
	f := newFailoverSetup(t, "--rp-every", "1s")
	const size = 32 << 20
	img, _ := f.protect(t, "web", size)
	initial, err := os.ReadFile(img)
	require.NoError(t, err)
	w := StartWriter(t, []string{img}, size, 3, time.Millisecond)
	defer w.Stop()
	files := f.site.Files(t)

	j := f.c.runJob(t, 0, "failover", "web", "--test")
	require.Equal(t, "running", f.site.Hyp.State("web-test"))
	env := f.site.Hyp.Env(t, "web-test")
	require.Equal(t, "1", env["FERRY_TEST"])
	test := f.site.Hyp.Disks(t, "web-test")[0]
	require.Contains(t, test, "test-"+j.ID)
	// The writer's log covers every write the point's view can hold.
	n := PrefixLengthOf(t, []string{test}, [][]byte{initial}, w.Log(), 3)
	t.Logf("the test machine's disk = initial image + first %d writes", n)
	during := f.c.WaitPoint("web", j.Machines[0].PointID, time.Minute)
	t.Logf("point %d arrived during the test failover", during.ID)
	var m struct{ State string }
	f.c.JSON(&m, "machines", "show", "web")
	require.Equal(t, "test-failed-over", m.State)

	f.c.runJob(t, 0, "cleanup", "web")
	require.Equal(t, "stopped", f.site.Hyp.State("web-test"))
	require.ElementsMatch(t, files, f.site.Files(t), "cleanup leaves the recovery site as it was")
	f.c.JSON(&m, "machines", "show", "web")
	require.Equal(t, "protected", m.State)
	f.c.MustFerry("jobs", "show", j.ID) // the job's record stays
}

// TestChangePointThenCommit: change-point keeps the target's writes as a
// named point and moves the disks to the other point; commit deletes the
// points (but those a re-protect needs) and change-point is refused
// afterwards.
func TestChangePointThenCommit(t *testing.T) {
	f := newFailoverSetup(t, "--rp-every", "1h")
	const size = 32 << 20
	img, p1 := f.protect(t, "app", size)
	atP1 := keepCopy(t, img) // the source at p1: nothing wrote to it since
	require.NoError(t, workload.Apply(img, 4, workload.Delta(4, size, 0.02)))
	j := f.c.runJob(t, 0, "failover", "app") // fresh cycle: point 2
	p2 := j.Machines[0].PointID
	require.Greater(t, p2, p1.ID)
	live := f.site.Hyp.Disks(t, "app")[0]
	// The failed-over machine writes.
	require.NoError(t, workload.Apply(live, 12, workload.Delta(12, size, 0.01)))
	written, err := os.ReadFile(live)
	require.NoError(t, err)

	j = f.c.runJob(t, 0, "change-point", "app", "--point", fmt.Sprint(p1.ID))
	requireSameFile(t, atP1, live)
	var kept *Point
	for _, p := range f.c.Points("app") {
		if strings.HasPrefix(p.Name, "target-writes-") {
			kept = &p
		}
	}
	require.NotNil(t, kept, "the target's writes are kept as a named point")
	expW := f.c.Export("app", kept.ID)
	got, err := os.ReadFile(filepath.Join(expW, "d.raw"))
	require.NoError(t, err)
	require.True(t, string(written) == string(got), "the named point holds exactly the target's disk before the change")

	f.c.runJob(t, 0, "commit", "app", "--force")
	// Commit deletes the points but the two a re-protect needs: the one
	// the live disks started from (p1, after change-point) and the newest.
	var left []int64
	for _, p := range f.c.Points("app") {
		left = append(left, p.ID)
	}
	require.Equal(t, []int64{p1.ID, kept.ID}, left)
	r := f.c.Ferry("change-point", "app", "--point", "latest")
	require.Equal(t, 1, r.Code)
	require.Contains(t, r.Stderr, "committed")
}
