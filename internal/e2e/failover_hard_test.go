package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/workload"
)

// jobShow reads a job.
func (c *Controller) jobShow(t *testing.T, id string) Job {
	t.Helper()
	var j Job
	c.JSON(&j, "jobs", "show", id)
	return j
}

// waitJob waits for a job to end (across controller restarts).
func (c *Controller) waitJob(t *testing.T, id string, timeout time.Duration) Job {
	t.Helper()
	var j Job
	require.Eventually(t, func() bool {
		j = c.jobShow(t, id)
		switch j.State {
		case "succeeded", "failed", "partial", "cancelled":
			return true
		}
		return false
	}, timeout, 100*time.Millisecond, "job %s never ended", id)
	return j
}

// waitMoving waits until a job's move step has moved some bytes.
func (c *Controller) waitMoving(t *testing.T, id string) {
	t.Helper()
	require.Eventually(t, func() bool {
		j := c.jobShow(t, id)
		for _, s := range j.Steps {
			if s.Name == "move" && s.State == "running" && s.BytesDone > 0 && s.BytesDone < s.BytesTotal {
				return true
			}
		}
		return false
	}, 5*time.Minute, 20*time.Millisecond, "the move never got under way")
}

// TestFailoverSurvivesKills: kill -9 of the controller, and separately of
// the recovery-site agent, during the failover of a 1 GiB disk: the job
// finishes by itself after the restart and the disk is correct.
func TestFailoverSurvivesKills(t *testing.T) {
	for _, victim := range []string{"controller", "target agent"} {
		t.Run(victim, func(t *testing.T) {
			f := newFailoverSetup(t, "--rp-every", "1h")
			const size = 1 << 30
			img := filepath.Join(f.mnt, "big.img")
			randomImage(t, img, 64<<20)
			require.NoError(t, os.Truncate(img, size))
			f.c.MustFerry("protect", "big", "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", "dr")
			p1 := f.c.WaitPoint("big", 0, 3*time.Minute)
			f.site.waitStaged(t, "big", p1.ID)
			randomImage(t, img, size) // every block changes: the move is a whole GiB

			id := strings.TrimSpace(f.c.MustFerry("failover", "big"))
			f.c.waitMoving(t, id)
			if victim == "controller" {
				f.c.Restart()
			} else {
				f.site.Agent.Proc.Kill()
				time.Sleep(500 * time.Millisecond)
				f.site.Agent.Start()
			}
			j := f.c.waitJob(t, id, 10*time.Minute)
			require.Equal(t, "succeeded", j.State, "job error: %s", j.Error)
			requireSameFile(t, img, f.site.Hyp.Disks(t, "big")[0])
		})
	}
}

var restoreDone = regexp.MustCompile(`msg="restore done" .*? bytes=(\d+)`)

// restoredBytes sums what an agent's write path reported writing.
func restoredBytes(out string) int64 {
	var n int64
	for _, m := range restoreDone.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseInt(m[1], 10, 64)
		n += v
	}
	return n
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	return st.Sys().(*syscall.Stat_t).Blocks * 512
}

// TestFailoverWorkFollowsTheChange: with staging caught up, 64 MiB of
// random 4 KiB writes at the source and a new point, the failover of a
// 2 GiB and of a 16 GiB disk each writes at most 1.5 × the changed blocks'
// bytes at the recovery site — never the whole disk.
func TestFailoverWorkFollowsTheChange(t *testing.T) {
	f := newFailoverSetup(t, "--rp-every", "1h")
	const writes = 64 << 20 / workload.WriteSize
	times := map[string]time.Duration{}
	for _, size := range []int64{2 << 30, 16 << 30} {
		name := "m" + strconv.FormatInt(size>>30, 10)
		img := filepath.Join(f.mnt, name+".img")
		randomImage(t, img, 32<<20)
		require.NoError(t, os.Truncate(img, size))
		f.c.MustFerry("protect", name, "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", "dr")
		p1 := f.c.WaitPoint(name, 0, 5*time.Minute)
		f.site.waitStaged(t, name, p1.ID)

		delta := workload.Delta(uint64(size), size, float64(writes*workload.WriteSize)/float64(size))
		changed := map[int64]bool{}
		for _, w := range delta {
			changed[w.Offset/(64<<10)] = true
		}
		changedBytes := int64(len(changed)) * 64 << 10
		require.NoError(t, workload.Apply(img, uint64(size), delta))
		before := restoredBytes(f.site.Agent.Proc.Output())
		start := time.Now()
		j := f.c.runJob(t, 0, "failover", name)
		times[name] = time.Since(start)
		require.Greater(t, j.Machines[0].PointID, p1.ID, "a new point with the writes")
		written := restoredBytes(f.site.Agent.Proc.Output()) - before
		t.Logf("%s (%d GiB): %d writes touched %d blocks (%d MiB); the recovery site wrote %d MiB (%.2f×); failover took %s",
			name, size>>30, len(delta), len(changed), changedBytes>>20, written>>20, float64(written)/float64(changedBytes), times[name].Round(time.Millisecond))
		require.LessOrEqual(t, written, changedBytes*3/2, "the recovery site rewrote more than the change")
		live := f.site.Hyp.Disks(t, name)[0]
		requireSameFile(t, img, live)
		require.Less(t, allocated(t, live), int64(32<<20)+changedBytes*3/2, "the failed-over disk stays sparse: only what was ever written is allocated")
	}
}

// TestEncryptedFailoverNeedsTheKey: a failover of an encrypted repository
// without --key-file stops before anything is touched; with it, the disks
// come out right.
func TestEncryptedFailoverNeedsTheKey(t *testing.T) {
	keys := t.TempDir()
	bin := Binaries(t)
	out, err := execOut(bin+"/ferry", "keys", "generate", "--out", keys)
	require.NoError(t, err, out)
	f := &failoverSetup{mnt: t.TempDir()}
	f.c = StartController(t, "--public-key", filepath.Join(keys, "repository.pub"))
	f.src = EnrollAgent(t, f.c, f.c.Addr, "src")
	f.site = AddSite(t, f.c, f.c.Addr, "dr")
	f.c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	img := filepath.Join(f.mnt, "sec.img")
	makeImage(t, img, 8, 16<<20)
	power := filepath.Join(t.TempDir(), "power")
	require.NoError(t, os.WriteFile(power, []byte("stopped\n"), 0o644))
	f.c.MustFerry("protect", "sec", "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", "dr", "--status", "cat "+power)
	f.c.WaitPoint("sec", 0, time.Minute)

	j := f.c.runJob(t, 3, "failover", "sec")
	require.Contains(t, j.Error, "--key-file")
	require.Equal(t, "failed", j.step("prerequisites"))
	require.Equal(t, "absent", f.site.Hyp.State("sec"), "nothing was started")
	_, err = os.Stat(filepath.Join(f.site.Dir, "sec", "live"))
	require.True(t, os.IsNotExist(err), "nothing was touched at the target")
	var m struct{ State string }
	f.c.JSON(&m, "machines", "show", "sec")
	require.Equal(t, "protected", m.State)

	r := f.c.Ferry("points", "export", "sec", "--out", t.TempDir())
	require.Equal(t, 1, r.Code, "an export needs the key too")
	f.c.runJob(t, 0, "failover", "sec", "--key-file", filepath.Join(keys, "repository.key"))
	requireSameFile(t, img, f.site.Hyp.Disks(t, "sec")[0])
}
