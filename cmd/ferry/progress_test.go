package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// TestProgressPlainLinesPerTenth: without a terminal, progress is plain
// lines, one per tenth crossed (or label changed), never a carriage return.
func TestProgressPlainLinesPerTenth(t *testing.T) {
	var b bytes.Buffer
	o := newProgressOut(&b)
	require.False(t, o.tty, "a buffer is not a terminal")
	for _, done := range []int64{0, 5, 12, 13, 55, 56, 100} {
		o.update(progress{label: "initial sync", done: done << 20, total: 100 << 20, rate: 4 << 20})
	}
	o.update(progress{label: "other", done: 100 << 20, total: 100 << 20})
	o.println("done")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	require.Equal(t, []string{
		"initial sync   0% (0B of 100MiB, 4MiB/s)",
		"initial sync  12% (12MiB of 100MiB, 4MiB/s)",
		"initial sync  55% (55MiB of 100MiB, 4MiB/s)",
		"initial sync 100% (100MiB of 100MiB, 4MiB/s)",
		"other 100% (100MiB of 100MiB)",
		"done",
	}, lines)
	require.NotContains(t, b.String(), "\r")
}

// TestProgressBarOnATerminal: on a terminal, each update redraws one line
// in place (carriage return, line, clear to its end) that fits the
// terminal; text printed after it starts on a line of its own.
func TestProgressBarOnATerminal(t *testing.T) {
	var b bytes.Buffer
	o := &progressOut{w: &b, tty: true, width: 80, now: time.Now}
	eta := 30.0
	o.update(progress{label: "initial sync", done: 25 << 20, total: 100 << 20, rate: 1 << 20, eta: &eta})
	// The bar gives up columns so that the figures fit in 79.
	require.Equal(t, "\rinitial sync [======>                  ]  25%  25MiB of 100MiB  1MiB/s  ETA 30s\x1b[K", b.String())
	require.Equal(t, 79, utf8.RuneCountInString(strings.Trim(b.String(), "\r\x1b[K")))
	b.Reset()
	o.update(progress{label: "initial sync", done: 100 << 20, total: 100 << 20, rate: 1 << 20, eta: &eta})
	o.println("m: first point 1")
	require.Equal(t, "\rinitial sync [==============================] 100%  100MiB of 100MiB  1MiB/s\x1b[K\nm: first point 1\n", b.String())

	// A narrow terminal: the bar shrinks, the line is cut to fit.
	o = &progressOut{w: &b, tty: true, width: 40, now: time.Now}
	line := o.barLine(progress{label: "j-1  move-disks", done: 1 << 30, total: 4 << 30, rate: 1 << 20, eta: &eta})
	require.LessOrEqual(t, utf8.RuneCountInString(line), 39)
	require.Contains(t, line, "[==>       ]", "the bar keeps 10 columns")
}

// TestStepProgressETA: a job step's rate is its average since it started;
// the time left follows.
func TestStepProgressETA(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	p := fromStep("s", api.JobStep{BytesDone: 25, BytesTotal: 100, Started: now.Add(-10 * time.Second)}, now)
	require.Equal(t, int64(2), p.rate)
	require.NotNil(t, p.eta)
	require.InDelta(t, 30, *p.eta, 1e-9)
	p = fromStep("s", api.JobStep{BytesDone: 0, BytesTotal: 100, Started: now.Add(-10 * time.Second)}, now)
	require.Nil(t, p.eta, "nothing moved yet: no estimate")
}

// TestSummariseEstate: status counts machines by state and health, finds
// the worst RPO, lists running cycles and unfinished jobs, and the agents
// without a session (not the revoked ones) with the machines they serve.
func TestSummariseEstate(t *testing.T) {
	rpo := func(s float64) *float64 { return &s }
	ms := []api.Machine{
		{Name: "web", Agent: "h1", State: "protected", Health: "healthy", RPOSeconds: rpo(5)},
		{Name: "db", Agent: "h2", State: "failed-over", Health: "warning", HealthReason: "not replicating", RPOSeconds: rpo(900)},
		{Name: "new", Agent: "h1", State: "syncing", Health: "healthy",
			Progress: &api.ReplicationProgress{Phase: api.PhaseShipping, BytesDone: 1, BytesTotal: 4}},
	}
	js := []api.Job{
		{ID: "j1", Kind: "failover", State: api.JobRunning, Machines: []api.JobMachine{{Name: "db"}},
			Steps: []api.JobStep{{Name: "move", State: api.StepRunning}}},
		{ID: "j0", Kind: "failover", State: api.JobSucceeded},
	}
	as := []api.Agent{{Name: "h1", Connected: true}, {Name: "h2"}, {Name: "old", Revoked: true}}
	e := summarise(ms, js, as)
	require.Equal(t, 3, e.Machines.Total)
	require.Equal(t, map[string]int{"protected": 1, "failed-over": 1, "syncing": 1}, e.Machines.ByState)
	require.Equal(t, map[string]int{"healthy": 2, "warning": 1}, e.Machines.ByHealth)
	require.Equal(t, "db", e.WorstRPO.Machine)
	require.Len(t, e.Cycles, 1)
	require.Equal(t, "new", e.Cycles[0].Machine)
	require.Equal(t, []estateJob{{ID: "j1", Kind: "failover", State: api.JobRunning, Machines: []string{"db"}, Step: "move running"}}, e.RunningJobs)
	require.Equal(t, estateAgents{Total: 3, Connected: 1, Revoked: 1}, e.Agents)
	require.Len(t, e.Disconnected, 1)
	require.Equal(t, "h2", e.Disconnected[0].Name)
	require.Equal(t, []string{"db"}, e.Disconnected[0].Machines)
	require.Equal(t, []estateMachine{{Name: "db", State: "failed-over", Health: "warning", Reason: "not replicating"}}, e.Attention)

	var b bytes.Buffer
	printEstate(&globals{stdout: &b}, e)
	out := b.String()
	require.Contains(t, out, "Machines:   3 (failed-over 1, protected 1, syncing 1; healthy 2, warning 1)")
	require.Contains(t, out, "Worst RPO:  15m0s (db, warning)")
	require.Contains(t, out, "  new: shipping")
	require.Contains(t, out, "  j1 failover (db) running: move running")
	require.Contains(t, out, "  disconnected: h2, last seen")
	require.Contains(t, out, "  db (failed-over) warning: not replicating")
}

// TestJobStepProgress: a running step with data to move shows its
// progress; once it succeeded, a step whose progress was shown ends full;
// steps without data show nothing here (their state lines do).
func TestJobStepProgress(t *testing.T) {
	var b bytes.Buffer
	o := newProgressOut(&b)
	now := time.Now()
	o.now = func() time.Time { return now }
	require.False(t, o.step("move", api.JobStep{State: api.StepRunning}, false), "no bytes: no progress")
	require.True(t, o.step("move", api.JobStep{State: api.StepRunning, BytesDone: 50, BytesTotal: 100, Started: now.Add(-time.Second)}, false))
	require.False(t, o.step("move", api.JobStep{State: api.StepSucceeded, BytesDone: 100, BytesTotal: 100}, true))
	require.False(t, o.step("start", api.JobStep{State: api.StepSucceeded, BytesTotal: 100}, false))
	require.Equal(t, "move  50% (50B of 100B, 50B/s, ETA 1s)\nmove 100% (100B of 100B)\n", b.String())
}
