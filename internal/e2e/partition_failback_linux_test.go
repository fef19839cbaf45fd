package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/netlab"
)

// TestNetPartitionMidFailback: a planned failback in the namespace lab
// (controller, home agent and recovery agent each in its own namespace).
// The recovery site is cut from the controller while the failback moves
// the home disks (the home set's state says moving_to). The home move
// goes on over the home link, and the home disk is then a complete point
// — the failback's final point, never a mix of it and the previous one
// (compared by sha256 with the bytes the test kept for both). The job
// does not start the machine at home while it cannot see the copy at the
// recovery site stopped: it waits at start-home, retrying with the reason
// in its notes; after the heal it finishes by itself: the machine runs at
// home on the final point, stopped at the recovery site. Before the
// retry, the job failed at start-home, leaving the machine stopped at both
// sites.
func TestNetPartitionMidFailback(t *testing.T) {
	r := newNetRig(t, false, fastKeepalive...)
	// The recovery site's directory is on the lab's XFS mount: its agent
	// reads the live disks as a source with reflink views.
	a := EnrollAgentIn(t, r.c, r.lab.Site("recovery").NS, r.c.Addr, "dr-agent", fastKeepalive...)
	site := &Site{Name: "dr", Dir: filepath.Join(r.mnt, "dr"), Hyp: NewHypervisor(t), Agent: a}
	require.NoError(t, os.MkdirAll(site.Dir, 0o700))
	r.c.MustFerry(append([]string{"targets", "add", "dr", "--agent", a.Name, "--dir", site.Dir}, site.Hyp.Flags()...)...)
	r.c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	homeHyp := NewHypervisor(t)
	img, mirror := r.image(t, "vm", netImage())
	r.c.MustFerry(append([]string{"protect", "vm", "--agent", "src", "--disk", "d=" + img, "--policy", "p", "--target", "dr"}, homeHyp.Flags()...)...)
	require.NoError(t, os.WriteFile(filepath.Join(homeHyp.Dir, "vm.state"), []byte("running\n"), 0o600))
	p := r.c.WaitPoint("vm", 0, 3*time.Minute)
	site.waitStaged(t, "vm", p.ID)

	r.c.runJob(t, 0, "failover", "vm")
	r.c.runJob(t, 0, "commit", "vm", "--force")
	live := site.Hyp.Disks(t, "vm")[0]
	const change = 24 << 20
	overwrite(t, live, mirror, change)
	r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	requireSameFileBytes(t, mirror, img)
	oldPoint := bytes.Clone(mirror)
	overwrite(t, live, mirror, change) // the failback's final point
	newPoint := bytes.Clone(mirror)

	// The home link is capped so that the home move lasts seconds.
	r.shape(t, "home", netlab.Shape{Rate: netCap})
	res := r.c.Ferry("failback", "vm")
	require.Equal(t, 0, res.Code, res.Stderr)
	id := strings.TrimSpace(res.Stdout)
	state := filepath.Join(filepath.Dir(img), ".ferry-home", "vm", "home", "state.json")
	var j Job
	var moving bool
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(state)
		if err == nil && bytes.Contains(b, []byte(`"moving_to"`)) {
			moving = true
			return true
		}
		r.c.JSON(&j, "jobs", "show", id)
		return j.State != "running" && j.State != "queued"
	}, 3*time.Minute, 2*time.Millisecond)
	require.True(t, moving, "the job ended before its home move was seen: %s %s", j.State, j.Error)

	rec := r.lab.Site("recovery")
	ended := strings.Count(a.Proc.Output(), sessionEnded)
	conns := strings.Count(a.Proc.Output(), connected)
	require.NoError(t, rec.Cut())
	cut, err := rec.IsCut()
	require.NoError(t, err)
	require.True(t, cut, "the router holds the cut")
	require.Eventually(t, func() bool { return strings.Count(a.Proc.Output(), sessionEnded) > ended }, time.Minute,
		50*time.Millisecond, "the recovery agent never noticed the partition")

	// The home move ends over the home link; start-home waits.
	require.Eventually(t, func() bool {
		r.c.JSON(&j, "jobs", "show", id)
		return j.step("move-home") == "succeeded" || j.State != "running"
	}, 3*time.Minute, 50*time.Millisecond)
	require.Equal(t, "running", j.State, "the job ended during the partition: %s", j.Error)
	home, err := os.ReadFile(img)
	require.NoError(t, err)
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	require.Contains(t, []string{sum(oldPoint), sum(newPoint)}, sum(home), "the home disk is a complete point")
	require.Equal(t, sum(newPoint), sum(home), "the home move completed: the final point")
	require.Eventually(t, func() bool {
		r.c.JSON(&j, "jobs", "show", id)
		for _, s := range j.Steps {
			if s.Name == "start-home" && strings.Contains(s.Note, "retrying") {
				return true
			}
		}
		return j.State != "running"
	}, 2*time.Minute, 100*time.Millisecond, "start-home never said why it waits")
	require.Equal(t, "running", j.State, "the job ended during the partition: %s", j.Error)
	require.NotEqual(t, "running", homeHyp.State("vm"), "not started at home while the recovery site cannot be seen")

	require.NoError(t, rec.Heal())
	require.Eventually(t, func() bool { return strings.Count(a.Proc.Output(), connected) > conns }, 2*time.Minute,
		50*time.Millisecond, "the recovery agent never reconnected after the heal")
	require.Eventually(t, func() bool {
		r.c.JSON(&j, "jobs", "show", id)
		return j.State != "running" && j.State != "queued"
	}, 3*time.Minute, 100*time.Millisecond)
	require.Equal(t, "succeeded", j.State, j.Error)
	requireSameFileBytes(t, newPoint, img)
	require.Equal(t, "running", homeHyp.State("vm"))
	require.Equal(t, "stopped", site.Hyp.State("vm"))
	var m struct {
		State string `json:"state"`
	}
	r.c.JSON(&m, "machines", "show", "vm")
	require.Equal(t, "back-home", m.State)
}
