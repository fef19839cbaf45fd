package alerts

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

func keysOf(cs []Condition) []string {
	out := []string{}
	for _, c := range cs {
		out = append(out, c.Key)
	}
	return out
}

// TestOpenIncidents: each event's rule in turn — a critical machine is an
// RPO breach; an agent is lost only after AgentLostAfter away, counted
// from the controller's start for one that was away before it; a revoked
// agent is never lost; disk-low opens under twice the reserve, never
// without one.
func TestOpenIncidents(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	in := Input{Now: now, Started: now.Add(-30 * time.Second), AgentLostAfter: time.Minute,
		Machines: []api.Machine{
			{Name: "ok", Health: "healthy"},
			{Name: "slow", Health: "warning", HealthReason: "source agent not connected"},
			{Name: "late", Health: "critical", HealthReason: "RPO 6m exceeds the threshold 5m0s"},
		},
		Agents: []api.Agent{
			{Name: "up", Connected: true, LastSeen: now},
			{Name: "long-gone", LastSeen: now.Add(-time.Hour)}, // away before a start 30 s ago: not yet
			{Name: "revoked", Revoked: true, LastSeen: now.Add(-time.Hour)},
		},
		DiskFree: 3 << 30, DiskReserve: 1 << 30,
	}
	require.Equal(t, []string{"rpo-breach/late"}, keysOf(Open(in)))
	require.Equal(t, "RPO 6m exceeds the threshold 5m0s", Open(in)[0].Detail)

	in.Started = now.Add(-2 * time.Minute)
	in.DiskFree = 2<<30 - 1
	got := Open(in)
	require.Equal(t, []string{"rpo-breach/late", "agent-lost/long-gone", "disk-low/controller"}, keysOf(got))
	require.Contains(t, got[2].Detail, "reserve 1GiB")

	in.Agents[1].LastSeen = now.Add(-59 * time.Second) // away less than a minute
	in.DiskReserve = 0
	require.Equal(t, []string{"rpo-breach/late"}, keysOf(Open(in)))
}

// TestJobEvents: failed and partial jobs raise job-failed (drill kinds
// drill-failed); succeeded and cancelled ones nothing.
func TestJobEvents(t *testing.T) {
	for _, tc := range []struct {
		kind, state, want string
	}{
		{"failover", api.JobFailed, api.EventJobFailed},
		{"failback", api.JobPartial, api.EventJobFailed},
		{"test-failover", api.JobFailed, api.EventJobFailed},
		{"failover", api.JobSucceeded, ""},
		{"failover", api.JobCancelled, ""},
	} {
		c, ok := JobEvent(api.Job{ID: "j1", Kind: tc.kind, State: tc.state, Error: "boom", Machines: []api.JobMachine{{Name: "web1"}}})
		require.Equal(t, tc.want != "", ok, "%s %s", tc.kind, tc.state)
		if ok {
			require.Equal(t, tc.want, c.Event)
			require.Equal(t, tc.want+"/j1", c.Key)
			require.Contains(t, c.Summary, "web1")
			require.Equal(t, "boom", c.Detail)
		}
	}
}

func TestDrillEvents(t *testing.T) {
	for _, result := range []string{api.DrillPassed, api.DrillCancelled} {
		_, ok := DrillEvent(api.DrillRun{ID: 3, Drill: "boot", Machine: "web1", Result: result})
		require.False(t, ok, "a %s drill raises nothing", result)
	}
	c, ok := DrillEvent(api.DrillRun{ID: 3, Drill: "boot", Machine: "web1", Point: 42, Result: api.DrillFailed, Error: "wait-up: No bootable device"})
	require.True(t, ok)
	require.Equal(t, api.EventDrillFailed, c.Event)
	require.Equal(t, "drill-failed/boot/3", c.Key, "one incident per failed run")
	require.Contains(t, c.Summary, "web1")
	require.Contains(t, c.Summary, "point 42")
	require.Equal(t, "wait-up: No bootable device", c.Detail)
}
