//go:build linux

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/internal/pgtest"
	"github.com/ferrydr/ferry/internal/testenv"
)

// pgBenchFor is how long pgbench runs while points are made.
const pgBenchFor = 30 * time.Second

// newPGDirs makes a socket directory and a pgbench log directory the
// postgres user can reach and write.
func newPGDirs(t *testing.T) (sock, logs string) {
	t.Helper()
	sock, logs = t.TempDir(), t.TempDir()
	require.NoError(t, pgtest.Traversable(sock))
	require.NoError(t, pgtest.Traversable(logs))
	require.NoError(t, pgtest.Chown(sock, logs))
	return sock, logs
}

// TestPostgresFailsOverFromATrackedFreezeUnderPgbench: PostgreSQL's data
// directory is on ext4 on a whole loop device, protected as a block device
// by an agent with --track-writes, with a recovery site as target. While
// pgbench (TPC-B-like, 4 clients) runs, points are made by tracked
// freezes. The machine fails over (`ferry failover --point`) to the newest
// point taken while pgbench ran; the failed-over disk, loop-mounted,
// starts as a crashed database does: PostgreSQL recovers (redo) and
// accepts connections. pgbench's balance invariant holds, pg_amcheck finds
// every page (checksummed), heap and index sound, and the point
// holds exactly the transactions the freeze cut: every one pgbench saw
// committed before the freeze, none it began after the thaw (pgbench's
// own per-transaction log, not Ferry's, is the reference).
func TestPostgresFailsOverFromATrackedFreezeUnderPgbench(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "fsfreeze")
	testenv.RequireTool(t, "losetup")
	if why := pgtest.Missing(); why != "" {
		testenv.Require(t, false, why+" (scripts/test-deps.sh installs it)")
	}
	ctx := t.Context()
	// Cleanups run after t.Context() is cancelled.
	bg := context.WithoutCancel(ctx)
	dev := testenv.LoopDevice(t, 512<<20)
	// The agent leaves its tracker pinned (that is the point); the test
	// unpins it before the device goes.
	t.Cleanup(func() { bdtrack.RemovePinned(dev, bdtrack.Options{}) })
	mnt := testenv.MountExt4(t, dev)
	require.NoError(t, pgtest.Traversable(mnt))
	sock, logs := newPGDirs(t)
	src := &pgtest.Cluster{Data: filepath.Join(mnt, "data"), Sock: sock, Port: 55440, Log: filepath.Join(mnt, "server.log")}
	// A checkpoint during the run: data files are written back while
	// points are taken, not only the WAL.
	require.NoError(t, src.Init(ctx, "checkpoint_timeout = 30s"))
	require.NoError(t, src.Start(ctx))
	t.Cleanup(func() {
		if src.Running(bg) {
			src.Stop(bg, "immediate")
		}
	})
	require.NoError(t, src.BenchInit(ctx, 5))

	c := StartController(t)
	agent := EnrollAgent(t, c, c.Addr, "src", "--track-writes", "--max-freeze", "3s")
	site := AddSite(t, c, c.Addr, "dr")
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "pg1", "--agent", "src", "--disk", "root="+dev, "--policy", "fast", "--target", "dr")
	first := c.WaitPoint("pg1", 0, 2*time.Minute)

	// The policy makes a point every second while pgbench runs.
	bench, err := src.Bench(ctx, pgtest.BenchOptions{Clients: 4, Threads: 2, Duration: pgBenchFor, LogDir: logs})
	require.NoError(t, err)
	require.NotEmpty(t, bench.Txns)
	benchStart, benchEnd := bench.Txns[0].Start(), bench.Txns[0].End
	for _, x := range bench.Txns {
		benchStart, benchEnd = minTime(benchStart, x.Start()), maxTime(benchEnd, x.End)
	}
	t.Logf("pgbench: %.0f tps, %d transactions, %s → %s", bench.TPS, bench.Processed,
		benchStart.Format(time.StampMilli), benchEnd.Format(time.StampMilli))
	// The source fails: its server stops as at a crash.
	require.NoError(t, src.Stop(ctx, "immediate"))

	// The newest point taken while pgbench ran.
	var during []Point
	for _, p := range c.Points("pg1") {
		if p.ID > first.ID && p.Time.After(benchStart) && p.Time.Before(benchEnd) {
			during = append(during, p)
		}
	}
	methods := map[string]int{}
	for _, p := range during {
		methods[p.Method]++
	}
	t.Logf("points during pgbench: %d, by method %v", len(during), methods)
	require.GreaterOrEqual(t, len(during), 3, "too few points while pgbench ran (agent log in the test output)")
	p := during[len(during)-1]
	require.Equal(t, "tracked-freeze", p.Method, "point %d: %+v", p.ID, p)
	require.Equal(t, "crash-consistent", p.Consistency, "point %d: %+v", p.ID, p)
	frozen := frozenFor(t, p)

	j := c.runJob(t, 0, "failover", "pg1", "--point", strconv.FormatInt(p.ID, 10))
	require.Equal(t, p.ID, j.Machines[0].PointID)
	disks := site.Hyp.Disks(t, "pg1")
	require.Len(t, disks, 1)

	// The failed-over disk, as the recovery machine's kernel sees it: ext4
	// replays its journal at mount, PostgreSQL its WAL at start.
	fdev := strings.TrimSpace(testenv.Run(t, "losetup", "-f", "--show", disks[0]))
	t.Cleanup(func() { exec.Command("losetup", "-d", fdev).Run() })
	fmnt := filepath.Join(t.TempDir(), "failed-over")
	require.NoError(t, os.Mkdir(fmnt, 0o755))
	testenv.Run(t, "mount", "-t", "ext4", fdev, fmnt)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", fmnt).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v %s", fmnt, err, out)
			exec.Command("umount", "-l", fmnt).Run()
		}
	})
	require.NoError(t, pgtest.Traversable(fmnt))
	// postmaster.pid names the source's postmaster, whose PID another
	// process of this one machine may hold by now; on a real recovery
	// machine it names nothing. PostgreSQL itself refuses to start while
	// that PID is alive, so the file goes.
	require.NoError(t, os.Remove(filepath.Join(fmnt, "data", "postmaster.pid")))
	fsock, _ := newPGDirs(t)
	rec := &pgtest.Cluster{Data: filepath.Join(fmnt, "data"), Sock: fsock, Port: 55441, Log: filepath.Join(fmnt, "recovered.log")}
	start := time.Now()
	require.NoError(t, rec.Start(ctx))
	t.Cleanup(func() { rec.Stop(bg, "immediate") })
	startedIn := time.Since(start)
	log, err := os.ReadFile(rec.Log)
	require.NoError(t, err)
	require.Contains(t, string(log), "automatic recovery in progress", "the point is of a running database: it must recover")
	require.Regexp(t, `redo done at`, string(log))

	bal, err := rec.Balances(ctx)
	require.NoError(t, err)
	require.NoError(t, rec.Check(ctx), "pg_amcheck of the recovered database")
	// Committed before the freeze: pgbench had its COMMIT's answer (the WAL
	// flushed) before the instant the filesystem was frozen. Begun after
	// the thaw: its first statement was sent after the freeze ended (the
	// note's milliseconds, rounded down: one more).
	// The instant by the agent's clock, which is pgbench's (one machine):
	// the controller's p.Time is off by its estimate of the agent's clock,
	// up to half a round trip.
	instant := agentInstant(t, agent.Proc.Output(), p.ID)
	t.Logf("point %d: instant %s by the agent's clock, %s by the controller's", p.ID, instant.Format(time.StampMicro), p.Time.Format(time.StampMicro))
	thaw := instant.Add(frozen + time.Millisecond)
	var mustHave, mayHave int64
	for _, x := range bench.Txns {
		if !x.Failed && x.End.Before(instant) {
			mustHave++
		}
		if x.Start().Before(thaw) {
			mayHave++
		}
	}
	t.Logf("point %d at %s (frozen %s, %s): recovered in %s, %s; pgbench committed %d before the freeze, began %d before the thaw",
		p.ID, p.Time.Format(time.StampMicro), frozen, p.Reason, startedIn.Round(time.Millisecond), bal, mustHave, mayHave)
	require.True(t, bal.Holds(), "pgbench's balance invariant: %s", bal)
	require.Positive(t, mustHave, "the point was taken before any transaction committed")
	require.GreaterOrEqual(t, bal.Txns, mustHave, "transactions committed before the freeze are missing")
	require.LessOrEqual(t, bal.Txns, mayHave, "the point holds transactions begun after the thaw")
}

var frozenMsRE = regexp.MustCompile(`frozen (\d+) ms`)

// frozenFor is how long a tracked freeze kept the filesystem frozen, from
// the point's note.
func frozenFor(t *testing.T, p Point) time.Duration {
	t.Helper()
	m := frozenMsRE.FindStringSubmatch(p.Reason)
	require.NotNil(t, m, "point %d's note says nothing of the freeze: %q", p.ID, p.Reason)
	ms, _ := strconv.Atoi(m[1])
	return time.Duration(ms) * time.Millisecond
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// agentInstant is point id's instant as the agent logged it ("point made",
// its own clock).
func agentInstant(t *testing.T, out string, id int64) time.Time {
	t.Helper()
	m := regexp.MustCompile(`msg="point made" .*?\bpoint=` + strconv.FormatInt(id, 10) + ` .*?\binstant=(\S+)`).FindStringSubmatch(out)
	require.NotNil(t, m, "the agent logged no instant for point %d", id)
	at, err := time.Parse(time.RFC3339Nano, m[1])
	require.NoError(t, err)
	return at
}
