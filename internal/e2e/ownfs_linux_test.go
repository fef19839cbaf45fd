package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/internal/testenv"
)

// TestTrackedFreezeOfTheAgentsOwnFilesystem: the agent's state directory
// and its log file are on the ext4 filesystem of the loop device it
// protects, with --track-writes. Without --freeze-own-fs the agent
// refuses to track it, and the refusal names the option; with it, every
// point after the first is made by freezing that filesystem, the agent's
// own included. The agent must not hang on its own frozen files: points
// keep coming, the agent answers the controller meanwhile, no freeze
// runs out its --max-freeze timer, and the writer's longest write stall
// is at most --max-freeze. Every tracked-freeze point, exported, mounted
// (its journal replayed) and checked with fsck.ext4, holds a prefix of
// the writer's steps, growing.
func TestTrackedFreezeOfTheAgentsOwnFilesystem(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "fsck.ext4")
	testenv.RequireTool(t, "fsfreeze")
	const maxFreeze = 2 * time.Second
	const want = 20 // tracked-freeze points to check
	dev := testenv.LoopDevice(t, 256<<20)
	t.Cleanup(func() { bdtrack.RemovePinned(dev, bdtrack.Options{}) })
	mnt := testenv.MountExt4(t, dev)
	// The writer's files are f<i> and rewrite.dat at the top
	// (checkFSPrefix skips other names): the agent's are beside them.
	state := filepath.Join(mnt, "agent-state")
	logFile := filepath.Join(mnt, "agent.log")
	// The log file is a config key (log_file), not a flag.
	cfgFile := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, os.WriteFile(cfgFile, []byte("state_dir: "+state+"\nlog_file: "+logFile+"\n"), 0o600))
	readLog := func() string {
		b, _ := os.ReadFile(logFile) // "" until the agent opens it
		return string(b)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(logFile); err == nil {
				t.Logf("--- the agent's log file ---\n%s", b)
			}
		}
	})
	w := startFSWriter(t, 2*time.Millisecond, mnt)

	c := StartController(t)
	src := EnrollAgentAt(t, c, state, "src", "--config", cfgFile, "--track-writes", "--max-freeze", maxFreeze.String())
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "pm1", "--agent", "src", "--disk", "root="+dev, "--policy", "fast")

	// Unlisted: refused, and the refusal says how to allow it.
	refusal := regexp.MustCompile(`not tracking this machine.*reason="` + regexp.QuoteMeta(dev) +
		`: the agent's state directory is on the disks' filesystem, which the agent freezes only when --freeze-own-fs lists its mount point \(` + regexp.QuoteMeta(mnt) + `\)"`)
	require.Eventually(t, func() bool { return refusal.MatchString(readLog()) }, 60*time.Second, 100*time.Millisecond,
		"the agent never refused to freeze the filesystem of its own state")
	before := c.WaitPoint("pm1", 0, 60*time.Second)
	require.NotEqual(t, "tracked-freeze", before.Method)

	// Listed: tracked.
	src.Proc.Stop()
	src.args = append(src.args, "--freeze-own-fs", mnt)
	src.Start()
	// A failed test kills the agent anywhere, perhaps inside a freeze: the
	// filesystem stays frozen, and a thread of the agent blocked on it
	// cannot die (the kernel's wait for the thaw is not interruptible), so
	// the harness's kill would wait for ever. Registered after the
	// last start, this runs first: kill, and thaw until the agent is gone.
	t.Cleanup(func() {
		p := src.Proc
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		for range 300 {
			exec.Command("fsfreeze", "-u", mnt).Run()
			select {
			case <-p.done:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	// Connected again once it makes a point (a direct read: its tracker
	// starts afresh).
	c.WaitPoint("pm1", before.ID, 60*time.Second)
	var tracked []Point
	answered, slowest := 0, time.Duration(0)
	deadline := time.Now().Add(150 * time.Second)
	for len(tracked) < want {
		require.True(t, time.Now().Before(deadline), "only %d tracked-freeze points after %d", len(tracked), before.ID)
		// The agent answers the controller while it freezes its own
		// filesystem (inventory is a call to the agent).
		start := time.Now()
		c.MustFerry("inventory", "src", "--json")
		slowest = max(slowest, time.Since(start))
		answered++
		time.Sleep(500 * time.Millisecond)
		tracked = tracked[:0]
		for _, p := range c.Points("pm1") {
			if p.ID > before.ID && p.Method == "tracked-freeze" {
				tracked = append(tracked, p)
			}
		}
	}
	w.Stop()
	steps, stall, err := w.state()
	require.NoError(t, err)
	t.Logf("writer made %d steps, longest %s; the agent answered %d inventory calls, slowest %s", steps, stall, answered, slowest)
	require.LessOrEqual(t, stall, maxFreeze, "a write waited longer than --max-freeze")

	// The log, on the frozen filesystem, got every record (held during
	// the freezes, written after), none dropped, and no freeze had to be
	// ended by its timer.
	log := readLog()
	made := pointsMadeBy(log, "tracked-freeze")
	for _, p := range tracked {
		require.True(t, made[p.ID], "the log misses point %d", p.ID)
	}
	require.NotContains(t, log, "the freeze ran out")
	require.NotContains(t, log, "the freeze timed out")
	require.NotContains(t, log, "log records were dropped")
	var frozen []time.Duration
	for _, m := range regexp.MustCompile(`msg="write tracking: thawed" .* frozen=(\S+)`).FindAllStringSubmatch(log, -1) {
		d, err := time.ParseDuration(m[1])
		require.NoError(t, err)
		frozen = append(frozen, d)
	}
	require.GreaterOrEqual(t, len(frozen), len(tracked))
	slices.Sort(frozen)
	t.Logf("%d freezes: p50 %s, p99 %s, max %s (the agent's own measure: from the last FIFREEZE to the thaw)", len(frozen),
		frozen[len(frozen)/2], frozen[len(frozen)*99/100], frozen[len(frozen)-1])
	require.LessOrEqual(t, frozen[len(frozen)-1], maxFreeze)

	checkPointPrefixes(t, c, "pm1", tracked, nil, true, steps, func(dir string) int {
		return checkExported(t, "ext4", filepath.Join(dir, "root.raw"))
	})
}
