package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// failpointEnv selects the failpoint at which `ferry serve` SIGKILLs
// itself (cmd/ferry/serve.go; docs/crash-semantics.md "Jobs and staging").
const failpointEnv = "FERRY_TEST_FAILPOINT"

// crashSetup is a controller started with a failpoint armed, a source
// agent, a recovery site and a protected machine whose bytes the test
// keeps.
type crashSetup struct {
	c      *Controller
	site   *Site
	dir    string
	img    string
	want   []byte // the source's bytes (the test writes them; never read back from Ferry)
	first  Point
	source []string // the source driver flags
}

// writeRandom writes n seeded random bytes at off into the image and the
// kept copy.
func (s *crashSetup) writeRandom(t *testing.T, seed uint64, off, n int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, ^seed))
	p := s.want[off : off+n]
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	f, err := os.OpenFile(s.img, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(p, int64(off))
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

const crashDisk = 4 << 20

// newCrashSetup protects machine m. The source driver reports the
// machine stopped (so its views are crash-consistent reads of a disk only
// the test writes, between cycles); stopCmd, when set, is its stop
// command. With stageFailpoint the controller runs with that failpoint
// armed from the start (the initial staging crosses it), else the
// machine is staged before the test arms anything.
func newCrashSetup(t *testing.T, stageFailpoint, stopCmd string) *crashSetup {
	t.Helper()
	s := &crashSetup{dir: t.TempDir()}
	state := filepath.Join(s.dir, "source.state")
	if stopCmd == "" {
		stopCmd = "echo stopped > " + state
	}
	s.source = []string{"--stop", stopCmd, "--start", "echo running > " + state,
		"--status", "cat " + state + " 2>/dev/null || echo stopped"}
	t.Setenv(failpointEnv, stageFailpoint)
	s.c = StartController(t)
	EnrollAgent(t, s.c, s.c.Addr, "src")
	s.site = AddSite(t, s.c, s.c.Addr, "dr")
	s.c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	s.img = filepath.Join(s.dir, "d.img")
	s.want = make([]byte, crashDisk)
	require.NoError(t, os.WriteFile(s.img, s.want, 0o644))
	s.writeRandom(t, 1, 0, crashDisk/2)
	s.writeRandom(t, 2, crashDisk*3/4, crashDisk/4)
	s.c.MustFerry(append([]string{"protect", "m", "--agent", "src", "--disk", "d=" + s.img, "--policy", "p", "--target", "dr"}, s.source...)...)
	if stageFailpoint == "" {
		s.first = s.c.WaitPoint("m", 0, 2*time.Minute)
	} // else the controller may die as soon as the point exists: the caller waits
	return s
}

// requireKilledAt waits until the controller killed itself at failpoint
// fp (the fault really happened), then starts it again unarmed.
func (s *crashSetup) requireKilledAt(t *testing.T, fp string) {
	t.Helper()
	s.waitKilledAt(t, fp)
	t.Setenv(failpointEnv, "")
	s.c.Restart()
}

// waitKilledAt waits until the controller killed itself at failpoint fp.
func (s *crashSetup) waitKilledAt(t *testing.T, fp string) {
	t.Helper()
	select {
	case <-s.c.Proc.done:
	case <-time.After(2 * time.Minute):
		require.Fail(t, "the controller never reached failpoint "+fp, s.c.Proc.Output())
	}
	require.Regexp(t, regexp.MustCompile(`failpoint `+regexp.QuoteMeta(fp)+`: killing the controller`), s.c.Proc.Output())
	require.Equal(t, -1, s.c.Proc.cmd.ProcessState.ExitCode(), "killed by a signal")
}

// restartArmed restarts the controller with failpoint fp armed and waits
// until both agents are connected again (the job then starts as it would
// on a controller that was up all along).
func (s *crashSetup) restartArmed(t *testing.T, fp string) {
	t.Helper()
	t.Setenv(failpointEnv, fp)
	s.c.Restart()
	require.Eventually(t, func() bool {
		var agents []struct {
			Name      string `json:"name"`
			Connected bool   `json:"connected"`
		}
		s.c.JSON(&agents, "agents", "list")
		n := 0
		for _, a := range agents {
			if a.Connected {
				n++
			}
		}
		return n == 2
	}, time.Minute, 50*time.Millisecond, "the agents did not reconnect")
}

// startJob starts a job without waiting and returns its id.
func (s *crashSetup) startJob(t *testing.T, args ...string) string {
	t.Helper()
	var j Job
	s.c.JSON(&j, args...)
	require.NotEmpty(t, j.ID)
	return j.ID
}

// startJobCut starts a job whose first step may kill the controller
// before the answer reaches the CLI (the job is recorded before it runs,
// and the admin call answers after its audit entry is written): it returns
// the id, or "" when the connection was cut; onlyJob finds it after the
// restart.
func (s *crashSetup) startJobCut(t *testing.T, args ...string) string {
	t.Helper()
	r := s.c.Ferry(append([]string{"--json"}, args...)...)
	if r.Code != 0 {
		require.Contains(t, r.Stderr, "EOF", "the call failed other than by the controller's kill")
		return ""
	}
	var j Job
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &j))
	require.NotEmpty(t, j.ID)
	return j.ID
}

// onlyJob returns the id of the one job the controller knows.
func (s *crashSetup) onlyJob(t *testing.T) string {
	t.Helper()
	var js []Job
	s.c.JSON(&js, "jobs", "list")
	require.Len(t, js, 1, "one job was started")
	return js[0].ID
}

// waitJob waits until a job ends by itself and returns it.
func (s *crashSetup) waitJob(t *testing.T, id string) Job {
	t.Helper()
	var j Job
	require.Eventually(t, func() bool {
		r := s.c.Ferry("jobs", "show", id, "--json")
		if r.Code != 0 || json.Unmarshal([]byte(r.Stdout), &j) != nil {
			return false
		}
		switch j.State {
		case "succeeded", "failed", "partial", "cancelled":
			return true
		}
		return false
	}, 3*time.Minute, 100*time.Millisecond, "job %s did not end", id)
	return j
}

func requireBytes(t *testing.T, want []byte, path string) {
	t.Helper()
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, len(want), len(got), "size of %s", path)
	if !bytes.Equal(want, got) {
		i := 0
		for want[i] == got[i] {
			i++
		}
		require.Failf(t, "disk bytes differ", "%s differs from the bytes the test wrote at offset %d", path, i)
	}
}

// requireFailedOver requires job id succeeded and machine m running at
// the site on disks holding want.
func (s *crashSetup) requireFailedOver(t *testing.T, j Job, want []byte) {
	t.Helper()
	require.Equal(t, "succeeded", j.State, "job %s: %s", j.ID, j.Error)
	require.Equal(t, "running", s.site.Hyp.State("m"))
	disks := s.site.Hyp.Disks(t, "m")
	require.Len(t, disks, 1)
	requireBytes(t, want, disks[0])
	var m struct{ State string }
	s.c.JSON(&m, "machines", "show", "m")
	require.Equal(t, "failed-over", m.State)
}

// TestCrashFailoverAtJobFailpoints SIGKILLs the real controller at each
// named transition of a failover job (a step recorded running, a step
// recorded done) for each of its steps. After a restart the job finishes
// by itself and the failed-over disk holds the bytes the source had
// after the test's last write — the fresh cycle's point.
func TestCrashFailoverAtJobFailpoints(t *testing.T) {
	steps := []string{"prerequisites", "process", "move", "start"}
	for _, fp := range []string{"job.step-running", "job.step-done"} {
		for i, step := range steps {
			t.Run(fmt.Sprintf("%s-hit%d-%s", fp, i+1, step), func(t *testing.T) {
				s := newCrashSetup(t, "", "")
				s.site.waitStaged(t, "m", s.first.ID)
				s.writeRandom(t, 3, crashDisk/4, 512<<10) // after the first point: only a fresh cycle has it
				want := bytes.Clone(s.want)
				s.restartArmed(t, fmt.Sprintf("%s#%d", fp, i+1))
				id := s.startJobCut(t, "failover", "m")
				s.requireKilledAt(t, fmt.Sprintf("%s#%d", fp, i+1))
				if id == "" {
					id = s.onlyJob(t)
				}
				j := s.waitJob(t, id)
				require.Equal(t, steps, stepNames(j))
				t.Logf("job %s point %d, notes: %v", j.ID, j.Machines[0].PointID, j.Machines[0].Notes)
				s.requireFailedOver(t, j, want)
				require.Greater(t, j.Machines[0].PointID, s.first.ID, "a fresh cycle's point")
			})
		}
	}
}

// TestCrashFailoverMidMove SIGKILLs the controller after the failover's
// move sent its first batch, before the barrier: the set at the target
// is part-way between two points. After the restart the move is redone
// from what the target says it holds, and the disk is byte-exact.
func TestCrashFailoverMidMove(t *testing.T) {
	s := newCrashSetup(t, "", "")
	s.site.waitStaged(t, "m", s.first.ID)
	s.writeRandom(t, 4, 0, crashDisk) // every block changes: a move of several batches
	want := bytes.Clone(s.want)
	s.restartArmed(t, "move.mid")
	id := s.startJob(t, "failover", "m")
	s.requireKilledAt(t, "move.mid#1")
	s.requireFailedOver(t, s.waitJob(t, id), want)
}

// TestCrashStagingMidMove SIGKILLs the controller in the middle of the
// initial staging move. After the restart the stager brings the staged
// replica to the newest point by itself (byte-exact), and a failover of
// the newest point runs on the same bytes.
func TestCrashStagingMidMove(t *testing.T) {
	s := newCrashSetup(t, "move.mid", "")
	s.waitKilledAt(t, "move.mid#1")
	// The barrier was never sent: the staged set cannot hold the point.
	if b, err := os.ReadFile(filepath.Join(s.site.Dir, "m", "staged", "state.json")); err == nil {
		var st struct {
			Point    int64 `json:"point"`
			MovingTo int64 `json:"moving_to"`
		}
		require.NoError(t, json.Unmarshal(b, &st))
		require.Zero(t, st.Point, "staged set after the kill: %s", b)
		t.Logf("staged set after the kill: point %d, moving to %d", st.Point, st.MovingTo)
	}
	t.Setenv(failpointEnv, "")
	s.c.Restart()
	s.first = s.c.WaitPoint("m", 0, time.Minute)
	s.site.waitStaged(t, "m", s.first.ID)
	requireBytes(t, s.want, s.site.StagedPath("m", "d"))
	j := s.c.runJob(t, 0, "failover", "m", "--point", "latest-processed")
	s.requireFailedOver(t, j, s.want)
}

// TestCrashPlannedFailoverRollback: a planned failover is cancelled while
// the source stops; the controller is SIGKILLed once the rollback is
// recorded, before it runs. After the restart the rollback finishes by
// itself (the job ends cancelled, the source runs again, the machine is
// protected), and a planned failover run afterwards loses nothing.
func TestCrashPlannedFailoverRollback(t *testing.T) {
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	// The source stops once the test opens the gate (its status says
	// stopped throughout: the views stay crash-consistent).
	s := newCrashSetup(t, "", fmt.Sprintf("while [ ! -f %s ]; do sleep 0.02; done", gate))
	s.site.waitStaged(t, "m", s.first.ID)
	s.writeRandom(t, 5, crashDisk/8, 256<<10)
	want := bytes.Clone(s.want)
	s.restartArmed(t, "job.rolling-back")
	id := s.startJob(t, "failover", "m", "--planned")
	require.Eventually(t, func() bool {
		var j Job
		s.c.JSON(&j, "jobs", "show", id)
		return j.step("stop-source") == "running"
	}, time.Minute, 20*time.Millisecond)
	s.c.MustFerry("cancel", id, "--force")
	require.NoError(t, os.WriteFile(gate, nil, 0o644))
	s.requireKilledAt(t, "job.rolling-back#1")
	j := s.waitJob(t, id)
	require.Equal(t, "cancelled", j.State, "job %s: %s", j.ID, j.Error)
	var m struct{ State string }
	s.c.JSON(&m, "machines", "show", "m")
	require.Equal(t, "protected", m.State)
	require.NotEqual(t, "running", s.site.Hyp.State("m"))
	b, err := os.ReadFile(filepath.Join(s.dir, "source.state"))
	require.NoError(t, err)
	require.Equal(t, "running", strings.TrimSpace(string(b)), "the rollback started the source again")

	j = s.c.runJob(t, 0, "failover", "m", "--planned")
	s.requireFailedOver(t, j, want)
}

func stepNames(j Job) []string {
	var out []string
	for _, s := range j.Steps {
		out = append(out, s.Name)
	}
	return out
}
