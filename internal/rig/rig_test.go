package rig

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/jobs"
)

// TestRigSmoke: a controller and two agents in this process protect a
// machine, fail it over, and the failed-over disk holds the bytes the test
// wrote; the controller restarts on its data directory and still knows
// the job and the machine, and the agents reconnect by themselves; an
// agent stopped shows disconnected and connects again when started.
func TestRigSmoke(t *testing.T) {
	c := NewController(t, jobs.Hooks{})
	src := c.Enroll("src")
	site := c.AddSite("dr")
	c.CreatePolicy("p", time.Hour)
	dir := t.TempDir()
	img := NewImage(t, filepath.Join(dir, "d.img"), 1, 2<<20)
	p1 := c.Protect(api.ProtectRequest{Machine: "m", Agent: src.Name, Disks: []api.DiskRef{{Name: "d", Path: img.Path}},
		Policy: "p", Target: site.Name, Driver: SourceDriver(dir)}, site)
	RequireFile(t, img.Want, site.SetDisk("m", "staged", "d"), "staged replica of the first point")

	want := img.Write(t, 2, 1<<20, 64<<10)
	j, err := c.StartFailover(api.FailoverRequest{Machine: "m"})
	require.NoError(t, err)
	j = c.WaitJob(j.ID)
	require.Equal(t, api.JobSucceeded, j.State, "job: %+v", j)
	require.Greater(t, j.Machines[0].PointID, p1.ID, "a fresh cycle made a new point")
	disks := site.Hyp.Disks(t, "m")
	require.Len(t, disks, 1)
	RequireFile(t, want, disks[0])
	require.Equal(t, "running", site.Hyp.State("m"))

	c.Restart()
	c.WaitConnected(src.Name)
	c.WaitConnected(site.Agent.Name)
	require.Equal(t, api.JobSucceeded, c.Job(j.ID).State)
	require.Equal(t, "failed-over", c.Machine("m").State)

	// An agent stops and starts again with its enrolled identity.
	src.Stop()
	require.Eventually(t, func() bool {
		for _, a := range c.agents(t) {
			if a.Name == src.Name {
				return !a.Connected
			}
		}
		return false
	}, Timeout, 20*time.Millisecond, "the stopped agent still shows connected")
	src.Start()
}

func (c *Controller) agents(t *testing.T) []api.Agent {
	cx, cancel := ctx()
	defer cancel()
	as, err := c.Admin.Agents(cx)
	require.NoError(t, err)
	return as
}
