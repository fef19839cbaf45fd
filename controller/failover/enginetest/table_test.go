package enginetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/internal/rig"
)

// diskSize keeps every case fast: a few MiB per machine.
const diskSize = 2 << 20

// action is what the test does at one step boundary of the job.
type action string

const (
	succeed action = "succeeds"
	fail    action = "fails-at"
	cancel  action = "cancel-at"
	restart action = "restart-at"
)

// plan is the one perturbation of the case running now, applied by the
// job engine's BeforeStep hook the first time its step comes.
type plan struct {
	mu        sync.Mutex
	step      string
	act       action
	fired     bool
	restartAt chan struct{}
}

func (p *plan) set(act action, step string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.act, p.step, p.fired = act, step, false
}

func (p *plan) take(step string) action {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fired || p.act == succeed || p.step != step {
		return succeed
	}
	p.fired = true
	return p.act
}

// bench is one rig (a controller, a source agent, a recovery site) shared
// by the cases of one job kind, which run one after another, each on a
// machine of its own.
type bench struct {
	t    *testing.T
	c    *rig.Controller
	src  *rig.Agent
	site *rig.Site
	plan *plan
	n    int
}

func newBench(t *testing.T) *bench {
	b := &bench{t: t, plan: &plan{act: succeed, restartAt: make(chan struct{}, 1)}}
	b.c = rig.NewController(t, jobs.Hooks{BeforeStep: b.beforeStep})
	b.src = b.c.Enroll("src")
	b.site = b.c.AddSite("dr")
	b.c.CreatePolicy("p", time.Hour) // points only when a job asks (and the initial sync)
	return b
}

// beforeStep runs in the job engine: it must not fail the test itself.
func (b *bench) beforeStep(ctx context.Context, job, step string) error {
	switch b.plan.take(step) {
	case fail:
		return rig.ErrInjected
	case cancel:
		_, err := b.c.Cancel(job)
		return err
	case restart:
		b.plan.restartAt <- struct{}{}
		<-ctx.Done() // the test stops the controller here
		return ctx.Err()
	}
	return nil
}

// machine is one case's protected machine and the bytes the test kept.
type machine struct {
	name string
	dir  string
	img  *rig.Image
	p1   int64  // the first point
	v1   []byte // the source's bytes at p1
	v2   []byte // the source's bytes after the test's write (newer points)
	// Set by a kind's prepare:
	live      []byte   // what the target's disks hold before the job (failed-over kinds)
	files     []string // the site's files before a test failover (cleanup)
	testJob   string   // the test failover to clean up
	preJobPts int
	kept      []int64 // commit: the points a commit keeps for a re-protect
}

func (b *bench) protect() *machine {
	// A restart case that could not start the controller again leaves it
	// down for every later case of the kind: say so at once rather than
	// wait out each case's timeout.
	require.True(b.t, b.c.Running(), "the kind's controller is down since an earlier case")
	b.c.WaitConnected(b.site.Agent.Name) // after a restart case
	b.n++
	m := &machine{name: fmt.Sprintf("m%d", b.n), dir: b.t.TempDir()}
	m.img = rig.NewImage(b.t, filepath.Join(m.dir, "d.img"), uint64(b.n), diskSize)
	m.v1 = m.img.Snapshot()
	p := b.c.Protect(api.ProtectRequest{Machine: m.name, Agent: b.src.Name, Disks: []api.DiskRef{{Name: "d", Path: m.img.Path}},
		Policy: "p", Target: b.site.Name, Driver: rig.SourceDriver(m.dir)}, b.site)
	m.p1 = p.ID
	// The source writes after its first point: a job that takes a fresh
	// point must carry these bytes.
	m.v2 = m.img.Write(b.t, uint64(b.n)*100, diskSize/2, 256<<10)
	return m
}

// pointBytes is what a target disk at point id must hold: the first point
// has v1, every later point v2 (the source is not written after).
func (m *machine) pointBytes(id int64) []byte {
	if id == m.p1 {
		return m.v1
	}
	return m.v2
}

// run starts a job and waits for its end, the case's restart included.
func (b *bench) run(start func() (api.Job, error), act action) api.Job {
	b.t.Helper()
	j, err := start()
	require.NoError(b.t, err)
	if act == restart {
		select {
		case <-b.plan.restartAt:
		case <-time.After(rig.Timeout):
			require.Fail(b.t, "the job never reached the restart's step")
		}
		b.c.Restart()
	}
	return b.c.WaitJob(j.ID)
}

// kind is one job kind's row of the table.
type kind struct {
	name  string
	steps []string // as `jobs show` reports them
	// prepare brings a protected machine to the state the job starts from.
	prepare func(b *bench, m *machine)
	start   func(b *bench, m *machine) (api.Job, error)
	// done checks a succeeded job: machine state and target disk bytes.
	done func(b *bench, m *machine, j api.Job)
	// undone checks a failed or cancelled job left the machine as before.
	undone func(b *bench, m *machine, j api.Job, act action)
}

func failoverJob(b *bench, m *machine, req api.FailoverRequest) api.Job {
	b.t.Helper()
	req.Machine = m.name
	j := b.run(func() (api.Job, error) { return b.c.StartFailover(req) }, succeed)
	require.Equal(b.t, api.JobSucceeded, j.State, "setup job: %s", j.Error)
	return j
}

// requireRunningOn requires the target machine running on disks holding want.
func requireRunningOn(b *bench, vm string, want []byte) {
	b.t.Helper()
	require.Equal(b.t, "running", b.site.Hyp.State(vm))
	disks := b.site.Hyp.Disks(b.t, vm)
	require.Len(b.t, disks, 1)
	rig.RequireFile(b.t, want, disks[0], "disk of %s", vm)
}

// requireLatest requires that `latest` (the default) took a point with
// the source's last write: the source agent is up (at most reconnecting
// after a controller restart), so a fresh cycle is possible within the
// job's deadline, and falling back to an older point loses those writes
// (issue 9: latest waits for a fresh point or fails, never silently falls
// back).
func requireLatest(b *bench, m *machine, j api.Job) {
	b.t.Helper()
	require.Greater(b.t, j.Machines[0].PointID, m.p1, "latest took a fresh point; notes: %v", j.Machines[0].Notes)
}

var kinds = []kind{{
	name:  "failover",
	steps: []string{"prerequisites", "process", "move", "start"},
	start: func(b *bench, m *machine) (api.Job, error) {
		return b.c.StartFailover(api.FailoverRequest{Machine: m.name})
	},
	done: func(b *bench, m *machine, j api.Job) {
		require.Equal(b.t, "failed-over", b.c.Machine(m.name).State)
		requireLatest(b, m, j)
		requireRunningOn(b, m.name, m.v2)
	},
	undone: func(b *bench, m *machine, j api.Job, _ action) {
		require.Equal(b.t, "protected", b.c.Machine(m.name).State)
		require.NotEqual(b.t, "running", b.site.Hyp.State(m.name))
	},
}, {
	name:  "test-failover",
	steps: []string{"prerequisites", "process", "clone", "move", "start"},
	start: func(b *bench, m *machine) (api.Job, error) {
		return b.c.StartFailover(api.FailoverRequest{Machine: m.name, Test: true})
	},
	done: func(b *bench, m *machine, j api.Job) {
		require.Equal(b.t, "test-failed-over", b.c.Machine(m.name).State)
		requireLatest(b, m, j)
		requireRunningOn(b, m.name+"-test", m.v2)
		require.Contains(b.t, b.site.Hyp.Disks(b.t, m.name+"-test")[0], "test-"+j.ID)
	},
	undone: func(b *bench, m *machine, j api.Job, _ action) {
		require.Equal(b.t, "protected", b.c.Machine(m.name).State)
		require.NotEqual(b.t, "running", b.site.Hyp.State(m.name+"-test"))
		require.NoDirExists(b.t, filepath.Join(b.site.Dir, m.name, "test-"+j.ID), "the test disks are removed")
	},
}, {
	name:  "cleanup",
	steps: []string{"stop-test", "remove-test"},
	prepare: func(b *bench, m *machine) {
		m.files = b.site.Files(b.t)
		m.testJob = failoverJob(b, m, api.FailoverRequest{Test: true}).ID
	},
	start: func(b *bench, m *machine) (api.Job, error) {
		return b.c.StartAction(rig.VerbCleanup, api.MachineActionRequest{Machine: m.name})
	},
	done: func(b *bench, m *machine, j api.Job) {
		require.Equal(b.t, "protected", b.c.Machine(m.name).State)
		require.Equal(b.t, "stopped", b.site.Hyp.State(m.name+"-test"))
		require.NoDirExists(b.t, filepath.Join(b.site.Dir, m.name, "test-"+m.testJob))
		// Another machine's staging may be mid-way through an atomic
		// write (a temporary file next to its state): what cleanup left
		// is what stays once such writes end.
		require.EventuallyWithT(b.t, func(c *assert.CollectT) {
			assert.ElementsMatch(c, m.files, b.site.Files(b.t), "cleanup leaves the site as it was")
		}, rig.Timeout, 50*time.Millisecond)
		// The staged replica the test cloned from is untouched: it holds
		// the point its status names. Staging may move it to a newer point
		// meanwhile (a cycle after a controller restart), writing the disk
		// before the status: compare once such a move has ended.
		require.EventuallyWithT(b.t, func(c *assert.CollectT) {
			st, ok := b.site.Set(m.name, "staged")
			if !assert.True(c, ok) {
				return
			}
			got, err := os.ReadFile(b.site.SetDisk(m.name, "staged", "d"))
			if assert.NoError(c, err) {
				assert.True(c, bytes.Equal(m.pointBytes(st.Point), got), "staged disk differs from its point %d", st.Point)
			}
		}, rig.Timeout, 50*time.Millisecond)
	},
	undone: func(b *bench, m *machine, j api.Job, _ action) {
		require.Equal(b.t, "test-failed-over", b.c.Machine(m.name).State)
		require.DirExists(b.t, filepath.Join(b.site.Dir, m.name, "test-"+m.testJob))
	},
}, {
	name:  "planned-failover",
	steps: []string{"prerequisites", "stop-source", "final-cycle", "power-off", "move", "start"},
	start: func(b *bench, m *machine) (api.Job, error) {
		return b.c.StartFailover(api.FailoverRequest{Machine: m.name, Planned: true})
	},
	done: func(b *bench, m *machine, j api.Job) {
		require.Equal(b.t, "failed-over", b.c.Machine(m.name).State)
		require.Equal(b.t, "stopped", rig.SourceState(m.dir))
		require.Greater(b.t, j.Machines[0].PointID, m.p1, "the final cycle made a point")
		requireRunningOn(b, m.name, m.v2) // zero bytes lost
	},
	undone: func(b *bench, m *machine, j api.Job, _ action) {
		require.Equal(b.t, "protected", b.c.Machine(m.name).State)
		require.NotEqual(b.t, "running", b.site.Hyp.State(m.name))
		if rig.StepState(j, "stop-source") == api.StepSucceeded {
			require.Equal(b.t, "running", rig.SourceState(m.dir), "a planned failover that did not finish restarts the source")
		}
	},
}, {
	name:  "change-point",
	steps: []string{"prerequisites", "stop-target", "keep-writes", "move", "start"},
	prepare: func(b *bench, m *machine) {
		j := failoverJob(b, m, api.FailoverRequest{})
		require.Greater(b.t, j.Machines[0].PointID, m.p1, "the failover took a fresh point")
		// The failed-over machine writes at the target.
		img := &rig.Image{Path: b.site.Hyp.Disks(b.t, m.name)[0], Want: append([]byte(nil), m.v2...)}
		m.live = img.Write(b.t, 7777, 0, 128<<10)
	},
	start: func(b *bench, m *machine) (api.Job, error) {
		return b.c.StartAction(rig.VerbChangePoint, api.MachineActionRequest{Machine: m.name, Point: fmt.Sprint(m.p1)})
	},
	done: func(b *bench, m *machine, j api.Job) {
		require.Equal(b.t, "failed-over", b.c.Machine(m.name).State)
		requireRunningOn(b, m.name, m.v1)
		var kept bool
		for _, p := range b.c.Points(m.name) {
			kept = kept || strings.HasPrefix(p.Name, "target-writes-")
		}
		require.True(b.t, kept, "the target's writes are kept as a named point")
	},
	undone: func(b *bench, m *machine, j api.Job, act action) {
		require.Equal(b.t, "failed-over", b.c.Machine(m.name).State)
		if act == cancel {
			// A cancelled job says the target was rolled back: the machine
			// runs on the disks it had.
			requireRunningOn(b, m.name, m.live)
		}
	},
}, {
	name:  "commit",
	steps: []string{"prerequisites", "commit"},
	prepare: func(b *bench, m *machine) {
		j := failoverJob(b, m, api.FailoverRequest{})
		m.live = m.pointBytes(j.Machines[0].PointID)
		pts := b.c.Points(m.name)
		m.preJobPts = len(pts)
		m.kept = []int64{j.Machines[0].PointID, pts[len(pts)-1].ID}
	},
	start: func(b *bench, m *machine) (api.Job, error) {
		return b.c.StartAction(rig.VerbCommit, api.MachineActionRequest{Machine: m.name})
	},
	done: func(b *bench, m *machine, j api.Job) {
		require.Equal(b.t, "committed", b.c.Machine(m.name).State)
		// main's commit keeps the point the machine runs on and the
		// newest (for a later re-protect), and deletes the rest.
		for _, p := range b.c.Points(m.name) {
			require.Contains(b.t, m.kept, p.ID, "a commit deletes every other point")
		}
		requireRunningOn(b, m.name, m.live)
	},
	undone: func(b *bench, m *machine, j api.Job, _ action) {
		require.Equal(b.t, "failed-over", b.c.Machine(m.name).State)
		require.Len(b.t, b.c.Points(m.name), m.preJobPts, "the points are kept")
		requireRunningOn(b, m.name, m.live)
	},
}, {
	name:  "revert",
	steps: []string{"prerequisites", "stop-target", "keep-writes", "start-home", "protected"},
	prepare: func(b *bench, m *machine) {
		j := failoverJob(b, m, api.FailoverRequest{})
		require.Greater(b.t, j.Machines[0].PointID, m.p1, "the failover took a fresh point")
		// The failed-over machine writes at the target.
		img := &rig.Image{Path: b.site.Hyp.Disks(b.t, m.name)[0], Want: append([]byte(nil), m.v2...)}
		m.live = img.Write(b.t, 9999, 0, 128<<10)
	},
	start: func(b *bench, m *machine) (api.Job, error) {
		return b.c.StartAction(rig.VerbRevert, api.MachineActionRequest{Machine: m.name})
	},
	done: func(b *bench, m *machine, j api.Job) {
		mc := b.c.Machine(m.name)
		require.Equal(b.t, "protected", mc.State)
		require.Equal(b.t, "home", mc.ActiveSite)
		require.Equal(b.t, "running", rig.SourceState(m.dir), "started at home")
		require.NotEqual(b.t, "running", b.site.Hyp.State(m.name), "still running at the recovery site")
		var kept int64
		for _, p := range b.c.Points(m.name) {
			if p.Name == "target-writes-"+j.ID {
				kept = p.ID
			}
		}
		require.NotZero(b.t, kept, "the recovery site's writes are kept as target-writes-%s", j.ID)
		// Replicating from home (hourly points: this one is the revert's
		// first cycle): the source's bytes, and the recovery site's disks
		// become its staged replica.
		home := b.c.WaitPoint(m.name, kept)
		b.site.WaitStaged(b.t, m.name, home.ID)
		rig.RequireFile(b.t, m.v2, b.site.SetDisk(m.name, "staged", "d"), "the staged replica after the revert")
	},
	undone: func(b *bench, m *machine, j api.Job, _ action) {
		require.Equal(b.t, "failed-over", b.c.Machine(m.name).State)
		if rig.StepState(j, "start-home") == api.StepSucceeded {
			// Started at home: never restarted at the recovery site.
			require.Equal(b.t, "running", rig.SourceState(m.dir))
			require.NotEqual(b.t, "running", b.site.Hyp.State(m.name))
			return
		}
		requireRunningOn(b, m.name, m.live) // running at the recovery site on its own writes
	},
}}

// TestJobKinds runs every job kind × {succeeds, a step fails, cancel at
// each step boundary, controller restart at each step boundary}. A failed
// or cancelled job must leave the machine as it was, and the same job run
// again must then succeed; every case ends with the target's disks compared
// to the bytes the test wrote.
//
// The kinds run at the same time, each on its own rig (their cases mostly
// wait on agents and drivers): goroutines rather than t.Parallel, whose
// limit is GOMAXPROCS.
func TestJobKinds(t *testing.T) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, k := range kinds {
		wg.Add(1)
		go func() {
			defer wg.Done() // also when -run filters the kind out
			t.Run(k.name, func(t *testing.T) { runKind(t, k) })
		}()
	}
}

func runKind(t *testing.T, k kind) {
	type tcase struct {
		act  action
		step string
	}
	cases := []tcase{{succeed, ""}}
	for _, s := range k.steps {
		for _, a := range []action{fail, cancel, restart} {
			cases = append(cases, tcase{a, s})
		}
	}
	b := newBench(t)
	for _, tc := range cases {
		t.Run(strings.TrimSuffix(string(tc.act)+"-"+tc.step, "-"), func(t *testing.T) {
			b.t = t
			b.c.SetT(t)
			runCase(b, k, tc.act, tc.step)
		})
	}
}

func runCase(b *bench, k kind, act action, step string) {
	t := b.t
	m := b.protect()
	if k.prepare != nil {
		k.prepare(b, m)
	}
	b.plan.set(act, step)
	defer b.plan.set(succeed, "")
	start := func() (api.Job, error) { return k.start(b, m) }
	j := b.run(start, act)
	require.Equal(t, k.steps, rig.StepNames(j), "the job's steps")
	switch act {
	case succeed, restart:
		require.Equal(t, api.JobSucceeded, j.State, "job %s: %s", j.ID, j.Error)
		if act == restart {
			require.Contains(t, strings.Join(j.Notes, "\n"), "resumed after a controller restart")
		}
		k.done(b, m, j)
		return
	case fail:
		require.Equal(t, api.JobFailed, j.State, "job %s: %s", j.ID, j.Error)
		require.Equal(t, api.StepFailed, rig.StepState(j, step))
		require.Equal(t, rig.ErrInjected.Error(), stepError(j, step), "the step failed with the injected error")
	case cancel:
		require.Equal(t, api.JobCancelled, j.State, "job %s: %s", j.ID, j.Error)
	}
	before := true
	for _, s := range j.Steps {
		if s.Name == step {
			before = false
		}
		if before {
			require.Contains(t, []string{api.StepSucceeded, api.StepSkipped}, s.State, "step %s ran before %s", s.Name, step)
		} else if s.Name != step || act == cancel {
			require.Equal(t, api.StepSkipped, s.State, "step %s after the %s", s.Name, act)
		}
	}
	k.undone(b, m, j, act)
	// The same job again, unperturbed, succeeds.
	b.plan.set(succeed, "")
	j = b.run(start, succeed)
	require.Equal(t, api.JobSucceeded, j.State, "the job run again after the %s: %s", act, j.Error)
	k.done(b, m, j)
}

func stepError(j api.Job, step string) string {
	for _, s := range j.Steps {
		if s.Name == step {
			return s.Error
		}
	}
	return ""
}

// TestDriverStartFailureFailsTheJob: a real step failure, not an
// injected one — the target's exec driver refuses to start the machine.
// The failover ends failed at its start step with the driver's refusal,
// the machine is protected again, and once the hypervisor accepts, the
// same failover runs the machine on the source's last bytes.
func TestDriverStartFailureFailsTheJob(t *testing.T) {
	b := newBench(t)
	m := b.protect()
	b.site.Hyp.RefuseStart(t, m.name)
	start := func() (api.Job, error) { return b.c.StartFailover(api.FailoverRequest{Machine: m.name}) }
	j := b.run(start, succeed)
	require.Equal(t, api.JobFailed, j.State, "job %s: %s", j.ID, j.Error)
	require.Equal(t, api.StepFailed, rig.StepState(j, "start"))
	require.Contains(t, stepError(j, "start"), "refusing to start "+m.name, "the driver's own message")
	require.Equal(t, "protected", b.c.Machine(m.name).State)
	require.Equal(t, "absent", b.site.Hyp.State(m.name), "never started")

	b.site.Hyp.AllowStart(t, m.name)
	j = b.run(start, succeed)
	require.Equal(t, api.JobSucceeded, j.State, "job %s: %s", j.ID, j.Error)
	requireLatest(b, m, j)
	requireRunningOn(b, m.name, m.v2)
}
