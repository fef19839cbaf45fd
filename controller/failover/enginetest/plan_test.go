package enginetest

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/jobs"
	"github.com/ferrydr/ferry/internal/rig"
)

// TestPlanFailoverInProcess runs an unplanned plan failover of four
// machines in two groups against an in-process controller and agents
// (run it with -race: a group's machines save the job data concurrently).
// The controller is restarted when group 2's step begins: the job resumes
// there, group 1's machines are not moved again, and every machine ends
// running on the bytes its source had.
func TestPlanFailoverInProcess(t *testing.T) {
	var restarted atomic.Bool
	restartAt := make(chan struct{}, 1)
	c := rig.NewController(t, jobs.Hooks{BeforeStep: func(ctx context.Context, job, step string) error {
		if step == "group-2" && restarted.CompareAndSwap(false, true) {
			restartAt <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}})
	src := c.Enroll("src")
	site := c.AddSite("dr")
	c.CreatePolicy("p", time.Hour)
	want := map[string][]byte{}
	var names []string
	for i := range 4 {
		name := fmt.Sprintf("m%d", i+1)
		dir := t.TempDir()
		img := rig.NewImage(t, filepath.Join(dir, "d.img"), uint64(i+1), diskSize)
		c.Protect(api.ProtectRequest{Machine: name, Agent: src.Name, Disks: []api.DiskRef{{Name: "d", Path: img.Path}},
			Policy: "p", Target: site.Name, Driver: rig.SourceDriver(dir)}, site)
		img.Write(t, uint64(i+1)*100, diskSize/2, 256<<10) // after the first point: latest must carry it
		want[name] = img.Snapshot()
		names = append(names, name)
	}
	cx, cancel := context.WithTimeout(context.Background(), rig.Timeout)
	defer cancel()
	_, err := c.Admin.CreatePlan(cx, api.Plan{Name: "two", Groups: []api.PlanGroup{
		{Machines: names[:2]},
		{Machines: names[2:], Pre: []api.PlanAction{{Script: `test "$FERRY_GROUP" = 2 && echo "pre of $FERRY_PLAN"`}}},
	}})
	require.NoError(t, err)

	j, err := c.StartFailover(api.FailoverRequest{Plan: "two"})
	require.NoError(t, err)
	select {
	case <-restartAt:
	case <-time.After(rig.Timeout):
		require.Fail(t, "the job never reached group 2")
	}
	before := c.Job(j.ID)
	c.Restart()
	j = c.WaitJob(j.ID)
	require.Equal(t, api.JobSucceeded, j.State, "%s", j.Error)
	require.Equal(t, "two", j.Plan)
	require.Contains(t, j.Actions[0].Output, "pre of two")
	for i, m := range j.Machines {
		require.Equal(t, "running", site.Hyp.State(m.Name))
		rig.RequireFile(t, want[m.Name], site.Hyp.Disks(t, m.Name)[0], "disk of %s", m.Name)
		require.Equal(t, 1+i/2, m.Group)
		if i < 2 {
			// Moved before the restart, not again after it.
			require.Equal(t, before.Machines[i].Steps, m.Steps, "%s ran its steps once", m.Name)
		}
	}
	g1End := j.Machines[0].Steps[len(j.Machines[0].Steps)-1].Ended
	for _, m := range j.Machines[2:] {
		require.True(t, g1End.Before(m.Steps[0].Started), "group 2 (%s) began after group 1 ended", m.Name)
	}
}
