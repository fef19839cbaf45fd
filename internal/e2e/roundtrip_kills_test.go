package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// Pause points of the processes (cmd/ferry-agent/testpause.go,
// cmd/ferry/testpause.go): the process holds there until a file exists.
const (
	agentPauseEnv      = "FERRY_AGENT_TEST_PAUSE"
	controllerPauseEnv = "FERRY_TEST_PAUSE"
	pauseShipHash      = "ship-hash"  // home agent: the home disks' hash resync begun (keep-home)
	pauseHomeMove      = "home-move"  // home agent: first batch of the home move written, move unfinished
	pauseStartHome     = "start-home" // controller: before failback's start-home step (final cycle done)
)

// killRound is the round trip of TestRoundTripKillsAtEachMoment, with the
// files that release the pauses of the current round.
type killRound struct {
	*roundTrip
	live     string
	homeKept []byte // the home disk's bytes as the test knows them (its writer's copy when it was last moved)
	release  string // directory of release files
}

// armHome restarts the home agent (kill -9) with the given pauses armed.
func (k *killRound) armHome(t *testing.T, points ...string) {
	t.Helper()
	var v []string
	for _, p := range points {
		v = append(v, p+":"+filepath.Join(k.release, p))
	}
	t.Setenv(agentPauseEnv, strings.Join(v, ","))
	k.home.Proc.Kill()
	k.home.Start()
	t.Setenv(agentPauseEnv, "")
}

// releaseAll lets every paused process go on.
func (k *killRound) releaseAll(t *testing.T) {
	t.Helper()
	for _, p := range []string{pauseShipHash, pauseHomeMove, pauseStartHome} {
		require.NoError(t, os.WriteFile(filepath.Join(k.release, p), nil, 0o600))
	}
}

// kill kills proc with SIGKILL and starts it again (unarmed).
func (k *killRound) kill(t *testing.T, proc string) {
	t.Helper()
	switch proc {
	case "controller":
		k.c.Restart()
	case "home-agent":
		k.home.Proc.Kill()
		k.home.Start()
	case "recovery-agent":
		k.site.Agent.Proc.Kill()
		k.site.Agent.Start()
	default:
		t.Fatalf("no process %q", proc)
	}
}

// waitAgents waits until both agents are connected to the controller.
func (k *killRound) waitAgents(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool {
		var agents []struct {
			Name      string `json:"name"`
			Connected bool   `json:"connected"`
		}
		k.c.JSON(&agents, "agents", "list")
		n := 0
		for _, a := range agents {
			if a.Connected {
				n++
			}
		}
		return n == 2
	}, time.Minute, 50*time.Millisecond, "the agents did not reconnect")
}

func pauseLine(re string) *regexp.Regexp { return regexp.MustCompile(re) }

// waitJobDone waits until job id ends and requires that it succeeded.
func (k *killRound) waitJobDone(t *testing.T, id string) Job {
	t.Helper()
	var j Job
	require.Eventually(t, func() bool {
		k.c.JSON(&j, "jobs", "show", id)
		return j.State != "running" && j.State != "queued"
	}, 3*time.Minute, 100*time.Millisecond, "job %s never ended", id)
	require.Equal(t, "succeeded", j.State, "job %s: %s", id, j.Error)
	return j
}

func (k *killRound) startJob(t *testing.T, args ...string) string {
	t.Helper()
	res := k.c.Ferry(args...)
	require.Equal(t, 0, res.Code, res.Stderr)
	id := strings.TrimSpace(res.Stdout)
	require.NotEmpty(t, id)
	return id
}

func (k *killRound) homeSetDir() string {
	return filepath.Join(filepath.Dir(k.img), ".ferry-home", "vm", "home")
}

// TestRoundTripKillsAtEachMoment: kill -9 of the controller, of the home
// agent and of the recovery agent at each of three moments of a round
// trip — during the home disks' hash (the re-protect keeping them as a
// point: the home agent is held at the start of its hash resync), mid-
// transfer into the home disks (the home agent is held after the first
// batch of the move is written) and between the failback's final cycle
// and its start at home (the controller is held before start-home). Each
// moment is proven by the held process's own line, not a sleep. After
// each kill the killed process starts again, the hold is released, and
// the job finishes by itself; the home disk then equals by sha256 the
// copy the test keeps. After the home agent's kill mid-transfer, the home
// agent — started while the controller is down — rolls the move back from
// its undo log: the home disk holds its bytes before the move before the
// controller can resume anything. One setup serves the nine cases: each
// process gets a re-protect (two kills), a failback (one kill), then a
// forward re-protect, a failover and a commit to start the next.
func TestRoundTripKillsAtEachMoment(t *testing.T) {
	testenv.RequireRoot(t)
	// Incompressible data (newRoundTrip with proxies), and each round's
	// writes change about 20 MiB of blocks: a move into the home disks is
	// three batches of at most 8 MiB, and one held after its first batch
	// cannot have its barrier in flight (the reader holds one more batch,
	// the stream's window 1 MiB).
	const size = 32 << 20
	r := newRoundTrip(t, size, true)
	r.c.runJob(t, 0, "failover", "vm")
	r.c.runJob(t, 0, "commit", "vm", "--force")
	k := &killRound{roundTrip: r, live: r.site.Hyp.Disks(t, "vm")[0], homeKept: bytes.Clone(r.mirror)}
	requireSameFileBytes(t, k.homeKept, r.img)

	for round, proc := range []string{"controller", "home-agent", "recovery-agent"} {
		k.release = t.TempDir()
		r.write(t, k.live, 500) // the machine writes at the recovery site
		k.armHome(t, pauseShipHash, pauseHomeMove)
		id := k.startJob(t, "reprotect", "vm", "--stop-source")

		t.Run(proc+"/home-disk-hash", func(t *testing.T) {
			r.home.Proc.WaitOutput(pauseLine(`test pause `+pauseShipHash+`: holding`), 2*time.Minute)
			var j Job
			r.c.JSON(&j, "jobs", "show", id)
			require.Equal(t, "running", j.step("keep-home"), "held in the keep-home step")
			if proc == "home-agent" {
				k.armHome(t, pauseHomeMove) // kill -9; armed for the same job's move, the next moment
			} else {
				k.kill(t, proc)
				require.NoError(t, os.WriteFile(filepath.Join(k.release, pauseShipHash), nil, 0o600))
			}
		})

		t.Run(proc+"/mid-transfer", func(t *testing.T) {
			r.home.Proc.WaitOutput(pauseLine(`test pause `+pauseHomeMove+`: holding`), 2*time.Minute)
			st, err := os.ReadFile(filepath.Join(k.homeSetDir(), "state.json"))
			require.NoError(t, err)
			require.Contains(t, string(st), `"moving_to"`, "the home set is between two points")
			fi, err := os.Stat(filepath.Join(k.homeSetDir(), "undo.log"))
			require.NoError(t, err, "the move keeps an undo log")
			require.Greater(t, fi.Size(), int64(48), "the log holds the first batch's old blocks")
			if proc != "home-agent" {
				k.kill(t, proc)
				require.NoError(t, os.WriteFile(filepath.Join(k.release, pauseHomeMove), nil, 0o600))
				if proc == "controller" {
					// The held move's stream died with the controller: the
					// home agent rolls it back at once.
					r.home.Proc.WaitOutput(pauseLine(`rolled back from the undo log`), time.Minute)
				}
				return
			}
			// The home agent dies mid-move. It starts again while the
			// controller is down: the rollback is the agent's own.
			r.home.Proc.Kill()
			r.c.Proc.Kill()
			r.home.Start()
			r.home.Proc.WaitOutput(pauseLine(`rolled back from the undo log`), time.Minute)
			requireSameFileBytes(t, k.homeKept, r.img)
			_, err = os.Stat(filepath.Join(k.homeSetDir(), "undo.log"))
			require.ErrorIs(t, err, os.ErrNotExist, "the rolled-back log is gone")
			st, err = os.ReadFile(filepath.Join(k.homeSetDir(), "state.json"))
			require.NoError(t, err)
			require.NotContains(t, string(st), `"moving_to"`, "the home set holds its old point again")
			r.c.start()
		})

		k.waitJobDone(t, id)
		r.requireMirror(t, r.img, fmt.Sprintf("home disk after a re-protect with kills of the %s", proc))
		r.requireState(t, "reverse-protected", "recovery", "reverse")

		r.write(t, k.live, 60)
		t.Setenv(controllerPauseEnv, pauseStartHome+":"+filepath.Join(k.release, pauseStartHome))
		r.c.Restart()
		t.Setenv(controllerPauseEnv, "")
		k.waitAgents(t) // a planned failback refuses an unreachable recovery site
		id = k.startJob(t, "failback", "vm")
		t.Run(proc+"/before-start-home", func(t *testing.T) {
			r.c.Proc.WaitOutput(pauseLine(`test pause before step `+pauseStartHome+` of job `+regexp.QuoteMeta(id)), 2*time.Minute)
			var j Job
			r.c.JSON(&j, "jobs", "show", id)
			require.Equal(t, "succeeded", j.step("final-cycle"))
			require.NotEqual(t, "succeeded", j.step("start-home"))
			require.Equal(t, "stopped", r.site.Hyp.State("vm"))
			k.kill(t, proc)
			require.NoError(t, os.WriteFile(filepath.Join(k.release, pauseStartHome), nil, 0o600))
		})
		k.waitJobDone(t, id)
		r.requireMirror(t, r.img, fmt.Sprintf("home disk after a failback with a kill of the %s", proc))
		r.requireState(t, "back-home", "home", "forward")
		require.Equal(t, "running", r.homeHyp.State("vm"))
		k.releaseAll(t)

		if round == 2 {
			break
		}
		// Forward again, then to the recovery site for the next process.
		r.c.runJob(t, 0, "reprotect", "vm")
		r.c.runJob(t, 0, "failover", "vm")
		r.requireMirror(t, k.live, "failed over")
		r.c.runJob(t, 0, "commit", "vm", "--force")
		k.homeKept = bytes.Clone(r.mirror)
	}
}
