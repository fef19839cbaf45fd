package failover_test

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/failover"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/session"
	"github.com/ferrydr/ferry/storage"
)

// scriptedAgents stands in for the two agents' RPCs: each test scripts the
// answers the real agents give in the situation it reproduces (a source
// busy with a long scheduled cycle; a hypervisor already running another
// machine of the same name). Catalog and repository are the real ones.
type scriptedAgents struct {
	mu     sync.Mutex
	calls  []string
	answer func(n int, method string, req any, resp any) error // n: how many calls of method came before
	counts map[string]int
}

func (a *scriptedAgents) Call(_ context.Context, _ string, method string, req, resp any) error {
	a.mu.Lock()
	name := method
	if d, ok := req.(msg.TargetDriverRequest); ok {
		name += ":" + d.Action
	}
	a.calls = append(a.calls, name)
	n := a.counts[name]
	a.counts[name]++
	a.mu.Unlock()
	return a.answer(n, name, req, resp)
}

func (a *scriptedAgents) Open(context.Context, string, protocol.StreamKind) (*session.Stream, error) {
	return nil, errors.New("no restore stream in this test: the move is already done")
}

func (a *scriptedAgents) Connected(string) bool { return true }

func (a *scriptedAgents) called(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.counts[name]
}

type rig struct {
	cat    *catalog.Catalog
	repo   *storage.Repo
	jobs   *jobs.Engine
	agents *scriptedAgents
}

// newRig opens a real catalog and repository with a protected machine m
// (source agent src, target dr on agent dst, whose driver has start and
// status commands) and one point, and runs the job engine.
func newRig(t *testing.T, answer func(n int, method string, req, resp any) error) (*rig, storage.Point) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	cat, err := catalog.Open(ctx, filepath.Join(dir, "catalog.db"), nil)
	require.NoError(t, err)
	require.NoError(t, cat.EnsureDefaultPolicy(ctx))
	require.NoError(t, cat.AddToken(ctx, catalog.Token{ID: "t", SecretHash: []byte("h"), Expires: time.Now().Add(time.Hour), Uses: 2}))
	for _, a := range []string{"src", "dst"} {
		require.NoError(t, cat.ConsumeToken(ctx, "t", func([]byte) bool { return true }, func(tx *sql.Tx) error {
			return catalog.AddAgent(ctx, tx, catalog.Agent{ID: "ag-" + a, Name: a, TokenID: "t", CertSerial: "s-" + a, CertNotAfter: time.Now().Add(time.Hour), Enrolled: time.Now()})
		}))
	}
	require.NoError(t, cat.AddTarget(ctx, "ag-dst", api.Target{Name: "dr", Agent: "dst", Dir: "/srv/dr", Driver: "exec", Format: "raw",
		Exec: api.Driver{Start: "start-it", Status: "status-of-it", Stop: "stop-it"}}))
	require.NoError(t, cat.AddMachine(ctx, catalog.Machine{Name: "m", AgentID: "ag-src", Policy: catalog.DefaultPolicyName, Target: "dr",
		State: catalog.StateProtected, ActiveSite: "source", Direction: "forward",
		Spec: api.ProtectRequest{Machine: "m", Agent: "src", Disks: []api.DiskRef{{Name: "d", Path: "/dev/null"}}}}))
	rdir := filepath.Join(dir, "repo")
	require.NoError(t, storage.Create(ctx, rdir, storage.DefaultCreateOptions()))
	repo, err := storage.Open(ctx, rdir, storage.DefaultOpenOptions())
	require.NoError(t, err)
	r := &rig{cat: cat, repo: repo, agents: &scriptedAgents{answer: answer, counts: map[string]int{}}}
	fo := &failover.Engine{Cat: cat, Repo: repo, Agents: r.agents, Log: testLogger(t),
		Push: func(context.Context, string) error { return nil }}
	r.jobs = jobs.New(cat, fo.Kinds(), testLogger(t), nil)
	require.NoError(t, r.jobs.Resume(ctx))
	t.Cleanup(func() {
		cancel()
		r.jobs.Wait()
		repo.Close()
		cat.Close()
	})
	return r, r.point(t)
}

// point commits a new (empty) point of m.
func (r *rig) point(t *testing.T) storage.Point {
	t.Helper()
	ctx := context.Background()
	p, err := r.repo.BeginPoint(ctx, "m", []storage.DiskSpec{{Name: "d", Size: 1 << 16, BlockSize: 1 << 16}})
	require.NoError(t, err)
	pt, err := p.Commit(ctx, storage.CommitInfo{Instant: time.Now(), Consistency: storage.CrashConsistent})
	require.NoError(t, err)
	return pt
}

func (r *rig) run(t *testing.T, req api.FailoverRequest) api.Job {
	t.Helper()
	ctx := context.Background()
	j, err := r.jobs.Start(ctx, failover.KindFailover, []string{"m"}, failover.Spec{Machines: []string{"m"}, Req: req}, time.Minute)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		j, err = r.jobs.Get(ctx, j.ID)
		require.NoError(t, err)
		return api.Terminal(j.State)
	}, 45*time.Second, 20*time.Millisecond)
	return j
}

// liveAt answers target.status: nothing before the move, then a live set
// at point (the move's result, so the test needs no restore stream).
func liveAt(n int, point int64, resp any) {
	st := resp.(*msg.TargetStatusResponse)
	st.Sets = map[string]msg.DiskSetState{}
	if n > 0 {
		st.Sets["live"] = msg.DiskSetState{Point: point, Disks: []msg.TargetDisk{{Name: "d", Size: 1 << 16, BlockSize: 1 << 16, Path: "/srv/dr/m/live/d.raw"}}}
	}
}

// TestLatestWaitsForTheFreshPointOfABusySource: the source agent is
// reachable but answers cycle.now with busy (a scheduled cycle runs longer
// than the minute the agent waits). The failover waits for the fresh
// point instead of silently using the previous one.
func TestLatestWaitsForTheFreshPointOfABusySource(t *testing.T) {
	var fresh, old storage.Point
	var r *rig
	r, old = newRig(t, func(n int, method string, req, resp any) error {
		switch method {
		case msg.MethodCycleNow:
			if n < 2 {
				return protocol.Errorf(protocol.CodeBusy, "machine m did not accept a cycle request")
			}
			fresh = r.point(t)
			resp.(*msg.CycleNowResponse).PointID = fresh.ID
		case msg.MethodTargetStatus:
			liveAt(n, fresh.ID, resp)
		case msg.MethodTargetDriver + ":status":
			if r.agents.called(msg.MethodTargetDriver+":start") > 0 {
				resp.(*msg.DriverResponse).Status = "running"
			}
		}
		return nil
	})
	j := r.run(t, api.FailoverRequest{Machine: "m"})
	require.Equal(t, api.JobSucceeded, j.State, "job: %s %v", j.Error, j.Notes)
	require.Equal(t, 3, r.agents.called(msg.MethodCycleNow), "asked again while busy")
	require.NotZero(t, fresh.ID)
	require.Equal(t, fresh.ID, j.Machines[0].PointID, "the fresh point, not the previous point %d", old.ID)
	notes := strings.Join(j.Machines[0].Notes, " ")
	require.Contains(t, notes, "fresh cycle made point")
	require.NotContains(t, notes, "newest complete point")
	require.Contains(t, strings.Join(j.Notes, " "), "waiting for a fresh point", "the job says it waits")
}

// TestLatestFailsAtTheDeadlineWhenNoFreshPointComes: a source that stays
// busy makes the job fail at its deadline, saying so — never a silent
// fallback to the previous point.
func TestLatestFailsAtTheDeadlineWhenNoFreshPointComes(t *testing.T) {
	r, _ := newRig(t, func(n int, method string, req, resp any) error {
		switch method {
		case msg.MethodCycleNow:
			return protocol.Errorf(protocol.CodeBusy, "machine m did not accept a cycle request")
		case msg.MethodTargetStatus:
			liveAt(0, 0, resp)
		}
		return nil
	})
	ctx := context.Background()
	j, err := r.jobs.Start(ctx, failover.KindFailover, []string{"m"}, failover.Spec{Machines: []string{"m"}, Req: api.FailoverRequest{Machine: "m"}}, 2*time.Second)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		j, err = r.jobs.Get(ctx, j.ID)
		require.NoError(t, err)
		return api.Terminal(j.State)
	}, 45*time.Second, 20*time.Millisecond)
	require.Equal(t, api.JobFailed, j.State)
	require.Contains(t, j.Error, "waiting for a fresh point")
	require.Zero(t, r.agents.called(msg.MethodTargetDriver+":start"))
}

// TestStartRunsWhenAnotherMachineOfTheNameRuns: the target driver's
// status already says "running" — about another machine of the same name
// that Ferry never started. The start step still runs start (this job's
// own earlier attempt never did).
func TestStartRunsWhenAnotherMachineOfTheNameRuns(t *testing.T) {
	var first storage.Point
	var r *rig
	r, first = newRig(t, func(n int, method string, req, resp any) error {
		switch method {
		case msg.MethodTargetStatus:
			liveAt(n, first.ID, resp)
		case msg.MethodTargetDriver + ":status":
			resp.(*msg.DriverResponse).Status = "running" // the other machine
		}
		return nil
	})
	j := r.run(t, api.FailoverRequest{Machine: "m", Point: "latest-processed"})
	require.Equal(t, api.JobSucceeded, j.State, "job: %s %v", j.Error, j.Notes)
	require.Equal(t, 1, r.agents.called(msg.MethodTargetDriver+":start"), "start ran: %v", r.agents.calls)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

// TestFailoverNeverWritesIntoLiveDisksAMachineRuns: the target already
// holds a live set for the name and the driver says a machine of that
// name runs (one whose failover was committed, say, protected again
// under its name while the target agent was away). The failover refuses
// before any disk is moved or started.
func TestFailoverNeverWritesIntoLiveDisksAMachineRuns(t *testing.T) {
	r, _ := newRig(t, func(n int, method string, req, resp any) error {
		switch method {
		case msg.MethodTargetStatus:
			liveAt(1, 7, resp) // always there: someone else's
		case msg.MethodTargetDriver + ":status":
			resp.(*msg.DriverResponse).Status = "running"
		}
		return nil
	})
	j := r.run(t, api.FailoverRequest{Machine: "m", Point: "latest-processed"})
	require.Equal(t, api.JobFailed, j.State)
	require.Contains(t, j.Error, "a running machine named m uses the live disks")
	require.Equal(t, api.StepFailed, j.Steps[0].State, "refused in prerequisites")
	require.Zero(t, r.agents.called(msg.MethodTargetDriver+":start"))
	m, err := r.cat.Machine(context.Background(), "m")
	require.NoError(t, err)
	require.Equal(t, catalog.StateProtected, m.State)
	require.Nil(t, m.Failover, "the machine record is untouched")
}

// TestStartRetriesOnlyRetryableDriverErrors: a target driver's start that
// fails with unavailable (what agents send for a hypervisor driver's
// transient error) is tried again and the job succeeds; one that fails with
// failed_precondition (any other driver failure, a timeout among them)
// fails the job at once, with the driver's reason.
func TestStartRetriesOnlyRetryableDriverErrors(t *testing.T) {
	for _, tc := range []struct {
		code   protocol.Code
		state  string
		starts int
	}{
		{protocol.CodeUnavailable, api.JobSucceeded, 2},
		{protocol.CodeFailedPrecondition, api.JobFailed, 1},
	} {
		t.Run(string(tc.code), func(t *testing.T) {
			var first storage.Point
			var r *rig
			r, first = newRig(t, func(n int, method string, req, resp any) error {
				switch method {
				case msg.MethodTargetStatus:
					liveAt(n, first.ID, resp)
				case msg.MethodTargetDriver + ":start":
					if r.agents.called(msg.MethodTargetDriver+":start") == 1 {
						return protocol.Errorf(tc.code, "libvirt driver start: connection reset")
					}
				case msg.MethodTargetDriver + ":status":
					if r.agents.called(msg.MethodTargetDriver+":start") > 1 {
						resp.(*msg.DriverResponse).Status = "running"
					}
				}
				return nil
			})
			j := r.run(t, api.FailoverRequest{Machine: "m", Point: "latest-processed"})
			require.Equal(t, tc.state, j.State, "job: %s %v", j.Error, j.Notes)
			require.Equal(t, tc.starts, r.agents.called(msg.MethodTargetDriver+":start"), "calls: %v", r.agents.calls)
			if tc.state == api.JobFailed {
				require.Contains(t, j.Error, "connection reset")
			}
		})
	}
}

// TestStartAsksALaggingStatusAgainSoon: a driver whose status says
// "starting" twice after start returned (machines of a plan group starting
// at once) is asked again within tens of milliseconds, not after a whole
// 500 ms poll each: the start step takes well under one poll.
func TestStartAsksALaggingStatusAgainSoon(t *testing.T) {
	var first storage.Point
	var r *rig
	var mu sync.Mutex
	started, lagging := false, 2
	r, first = newRig(t, func(n int, method string, req, resp any) error {
		mu.Lock()
		defer mu.Unlock()
		switch method {
		case msg.MethodTargetStatus:
			liveAt(n, first.ID, resp)
		case msg.MethodTargetDriver + ":start":
			started = true
		case msg.MethodTargetDriver + ":status":
			status := "absent"
			if started {
				status = "running"
				if lagging > 0 {
					status, lagging = "starting", lagging-1
				}
			}
			resp.(*msg.DriverResponse).Status = status
		}
		return nil
	})
	j := r.run(t, api.FailoverRequest{Machine: "m", Point: "latest-processed"})
	require.Equal(t, api.JobSucceeded, j.State, "job: %s %v", j.Error, j.Notes)
	require.Equal(t, 1, r.agents.called(msg.MethodTargetDriver+":start"))
	mu.Lock()
	require.Zero(t, lagging, "the status was asked until it said running")
	mu.Unlock()
	st := j.Steps[len(j.Steps)-1]
	require.Equal(t, failover.StepStart, st.Name)
	require.Less(t, st.Ended.Sub(st.Started), 450*time.Millisecond, "two lagging reads cost two short waits, not two 500 ms polls")
}
