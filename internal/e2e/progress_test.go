package e2e

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// liveProgress is a machine's progress as `machines show --json` prints it.
type liveProgress struct {
	Phase      string    `json:"phase"`
	BytesDone  int64     `json:"bytes_done"`
	BytesTotal int64     `json:"bytes_total"`
	RateBPS    int64     `json:"rate_bps"`
	Started    time.Time `json:"started"`
	ETASeconds *float64  `json:"eta_seconds"`
}

// Active reports whether the progress is of a cycle still running.
func (p *liveProgress) Active() bool { return p.Phase == "shipping" || p.Phase == "resync" }

type machineProgress struct {
	State        string        `json:"state"`
	Health       string        `json:"health"`
	HealthReason string        `json:"health_reason"`
	LastPoint    *time.Time    `json:"last_point"`
	Progress     *liveProgress `json:"progress"`
}

// sparseImage makes a file of size bytes holding random data (crypto/rand:
// nothing compresses) in the given [offset, length) ranges and holes
// elsewhere.
func sparseImage(t *testing.T, path string, size int64, data [][2]int64) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(size))
	buf := make([]byte, 4<<20)
	for _, r := range data {
		for off := r[0]; off < r[0]+r[1]; off += int64(len(buf)) {
			_, _ = rand.Read(buf)
			_, err := f.WriteAt(buf[:min(int64(len(buf)), r[0]+r[1]-off)], off)
			require.NoError(t, err)
		}
	}
	require.NoError(t, f.Close())
}

// TestInitialSyncReportsLiveProgress: during the initial sync of a 4 GiB
// image holding 2 GiB of random data (two 1 GiB ranges, holes between),
// `machines show --json`, polled, shows bytes_done rising monotonically to
// bytes_total = the 2 GiB of data, with a rate and an ETA while it runs;
// once the first point is made the progress is idle with every byte done.
// The policy's bandwidth cap keeps the sync observable for some seconds.
func TestInitialSyncReportsLiveProgress(t *testing.T) {
	const size, data = 4 << 30, 2 << 30
	img := filepath.Join(t.TempDir(), "big.img")
	sparseImage(t, img, size, [][2]int64{{0, 1 << 30}, {2 << 30, 1 << 30}})

	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "src")
	c.MustFerry("policies", "create", "capped", "--bandwidth", "256MiB/s")
	c.MustFerry("protect", "big", "--agent", "src", "--disk", "d="+img, "--policy", "capped")

	var samples []liveProgress
	deadline := time.Now().Add(5 * time.Minute)
	var m machineProgress
	for {
		require.True(t, time.Now().Before(deadline), "no first point within 5 minutes; samples: %+v", samples)
		m = machineProgress{}
		c.JSON(&m, "machines", "show", "big")
		if m.LastPoint != nil {
			break
		}
		if m.Progress != nil {
			samples = append(samples, *m.Progress)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A cycle that failed and was retried starts again from zero: judge
	// the last attempt, the one that made the point.
	last := samples
	for i := len(samples) - 1; i > 0; i-- {
		if !samples[i].Started.Equal(samples[i-1].Started) {
			last = samples[i:]
			break
		}
	}
	running := 0
	for i, s := range last {
		require.Equal(t, int64(data), s.BytesTotal, "bytes_total is the image's data, not its size: %+v", s)
		require.LessOrEqual(t, s.BytesDone, s.BytesTotal)
		if i > 0 {
			require.GreaterOrEqual(t, s.BytesDone, last[i-1].BytesDone, "bytes_done went back: %+v after %+v", s, last[i-1])
		}
		if s.Phase == "shipping" && s.BytesDone > 0 && s.BytesDone < s.BytesTotal {
			running++
			if s.RateBPS > 0 {
				require.NotNil(t, s.ETASeconds, "a running cycle with a rate has an ETA: %+v", s)
			}
		}
	}
	distinct := map[int64]bool{}
	for _, s := range last {
		distinct[s.BytesDone] = true
	}
	t.Logf("%d samples of the sync, %d while it ran, %d distinct bytes_done", len(last), running, len(distinct))
	require.GreaterOrEqual(t, running, 3, "the sync was observed running: %+v", last)
	require.GreaterOrEqual(t, len(distinct), 3, "bytes_done rose in steps: %+v", last)

	// The final report: every byte done, the cycle's average rate. The
	// point becomes visible a moment before its commit ends the progress
	// (the controller's commit hook, then the agent's last report): allow
	// that moment, not more.
	for end := time.Now().Add(5 * time.Second); m.Progress != nil && m.Progress.Active() && time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond)
		m = machineProgress{}
		c.JSON(&m, "machines", "show", "big")
	}
	require.NotNil(t, m.Progress)
	require.Equal(t, "idle", m.Progress.Phase)
	require.Equal(t, int64(data), m.Progress.BytesDone)
	require.Equal(t, int64(data), m.Progress.BytesTotal)
	require.Positive(t, m.Progress.RateBPS)
	t.Logf("the initial sync of %d MiB of data: %d MiB/s on average", data>>20, m.Progress.RateBPS>>20)
	require.LessOrEqual(t, m.Progress.RateBPS, int64(300<<20), "the average respects the 256 MiB/s cap (with slack for the burst)")

	// machines list --json carries it too.
	var ms []struct {
		Name     string        `json:"name"`
		Progress *liveProgress `json:"progress"`
	}
	c.JSON(&ms, "machines", "list")
	require.Len(t, ms, 1)
	require.NotNil(t, ms[0].Progress)
	require.Equal(t, int64(data), ms[0].Progress.BytesDone)
}

var firstPointRE = regexp.MustCompile(`(?m)^(\S+): first point (\d+) at \S+ \(`)

// TestProtectWaitDrawsABar: `protect --wait` on a pseudo-terminal (script)
// redraws one progress bar with carriage returns and ends with the first
// point; without a terminal it prints plain lines, no carriage return,
// and ends the same way.
func TestProtectWaitDrawsABar(t *testing.T) {
	if _, err := exec.LookPath("script"); err != nil {
		t.Skip("script (util-linux) is not installed: no pseudo-terminal to draw on")
	}
	const size = 192 << 20
	dir := t.TempDir()
	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "src")
	// 192 MiB at 24 MiB/s: about 8 s of sync, several redraws.
	c.MustFerry("policies", "create", "slow", "--bandwidth", "24MiB/s")

	img := filepath.Join(dir, "tty.img")
	sparseImage(t, img, size, [][2]int64{{0, size}})
	line := strings.Join([]string{filepath.Join(c.Bin, "ferry"), "--admin", c.Admin, "protect", "tty", "--agent", "src",
		"--disk", "d=" + img, "--policy", "slow", "--wait"}, " ")
	cmd := exec.Command("script", "-qec", line, "/dev/null")
	out, err := cmd.Output()
	require.NoError(t, err, "script: %s", out)
	text := string(out)
	require.Contains(t, text, "\r", "a bar is redrawn in place")
	require.Regexp(t, `initial sync \[=*>? *\] +\d+%`, text, "a bar: %q", text)
	require.Contains(t, text, "] 100%", "the bar ends full: %q", text)
	require.Contains(t, text, "/s", "the bar shows the rate: %q", text)
	require.Contains(t, text, "ETA ", "the bar shows the time left: %q", text)
	redraws := strings.Count(text, "\rinitial sync [")
	t.Logf("%d redraws on the terminal", redraws)
	require.GreaterOrEqual(t, redraws, 2)
	ttyLines := strings.Split(strings.TrimSpace(strings.ReplaceAll(text, "\r\n", "\n")), "\n")
	m := firstPointRE.FindStringSubmatch(ttyLines[len(ttyLines)-1])
	require.NotNil(t, m, "ends with the first point on a line of its own: %q", text)
	require.Equal(t, "tty", m[1])
	require.Equal(t, m[2], itoa(c.Points("tty")[0].ID))

	img2 := filepath.Join(dir, "plain.img")
	sparseImage(t, img2, size, [][2]int64{{0, size}})
	r := c.Ferry("protect", "plain", "--agent", "src", "--disk", "d="+img2, "--policy", "slow", "--wait")
	require.Equal(t, 0, r.Code, "%s%s", r.Stdout, r.Stderr)
	require.NotContains(t, r.Stdout, "\r", "no terminal: plain lines only")
	require.NotContains(t, r.Stdout, "[=", "no terminal: no bar")
	require.Regexp(t, `(?m)^initial sync +\d+% \(\S+ of 192MiB`, r.Stdout)
	lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
	require.GreaterOrEqual(t, len(lines), 3, "a first line, progress lines, the point: %q", r.Stdout)
	m = firstPointRE.FindStringSubmatch(lines[len(lines)-1])
	require.NotNil(t, m, "the last line is the first point: %q", r.Stdout)
	require.Equal(t, "plain", m[1])

	// The last cycle in the human views.
	require.Regexp(t, `Cycle: +idle: the last cycle compared 192MiB of 192MiB at \S+/s`, c.MustFerry("machines", "show", "plain"))
	require.Regexp(t, `(?m)^NAME .* CYCLE$`, c.MustFerry("machines", "list"))

	// --json --wait: the machine, with its first point.
	var pm machineProgress
	img3 := filepath.Join(dir, "json.img")
	sparseImage(t, img3, 8<<20, [][2]int64{{0, 8 << 20}})
	r = c.Ferry("protect", "js", "--agent", "src", "--disk", "d="+img3, "--wait", "--json")
	require.Equal(t, 0, r.Code, "%s%s", r.Stdout, r.Stderr)
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &pm), r.Stdout)
	require.NotNil(t, pm.LastPoint)
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// estate is `ferry status --json`.
type estate struct {
	Machines struct {
		Total    int            `json:"total"`
		ByState  map[string]int `json:"by_state"`
		ByHealth map[string]int `json:"by_health"`
	} `json:"machines"`
	WorstRPO *struct {
		Machine    string  `json:"machine"`
		RPOSeconds float64 `json:"rpo_seconds"`
	} `json:"worst_rpo"`
	RunningJobs []struct {
		ID string `json:"id"`
	} `json:"running_jobs"`
	Agents struct {
		Total, Connected, Revoked int
	} `json:"agents"`
	Disconnected []struct {
		Name     string   `json:"name"`
		Machines []string `json:"machines"`
	} `json:"disconnected_agents"`
	Attention []struct {
		Name   string `json:"name"`
		Health string `json:"health"`
		Reason string `json:"reason"`
	} `json:"attention"`
}

// TestStatusShowsTheEstate: a protected machine on a connected agent and
// one whose agent is gone: `ferry status` counts both by state and health,
// names the worst RPO, lists the disconnected agent with its machine and
// the unhealthy machine with why; the human form says the same.
func TestStatusShowsTheEstate(t *testing.T) {
	dir := t.TempDir()
	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "src")
	gone := EnrollAgent(t, c, c.Addr, "gone")
	for _, m := range []struct{ name, agent string }{{"web", "src"}, {"db", "gone"}} {
		img := filepath.Join(dir, m.name+".img")
		sparseImage(t, img, 16<<20, [][2]int64{{0, 8 << 20}})
		c.MustFerry("protect", m.name, "--agent", m.agent, "--disk", "d="+img)
		c.WaitPoint(m.name, 0, 2*time.Minute)
	}
	gone.Proc.Kill()
	require.Eventually(t, func() bool {
		var e estate
		c.JSON(&e, "status")
		return len(e.Disconnected) == 1
	}, 30*time.Second, 100*time.Millisecond, "the killed agent never showed as disconnected")

	var e estate
	c.JSON(&e, "status")
	require.Equal(t, 2, e.Machines.Total)
	require.Equal(t, 2, e.Machines.ByState["protected"], "%+v", e.Machines)
	require.Equal(t, 1, e.Machines.ByHealth["warning"], "%+v", e.Machines)
	require.Equal(t, 1, e.Machines.ByHealth["healthy"], "%+v", e.Machines)
	require.NotNil(t, e.WorstRPO)
	require.Contains(t, []string{"web", "db"}, e.WorstRPO.Machine)
	require.Positive(t, e.WorstRPO.RPOSeconds)
	require.Empty(t, e.RunningJobs)
	require.Equal(t, 2, e.Agents.Total)
	require.Equal(t, 1, e.Agents.Connected)
	require.Equal(t, "gone", e.Disconnected[0].Name)
	require.Equal(t, []string{"db"}, e.Disconnected[0].Machines)
	require.Len(t, e.Attention, 1)
	require.Equal(t, "db", e.Attention[0].Name)
	require.Contains(t, e.Attention[0].Reason, "source agent not connected")

	out := c.MustFerry("status")
	require.Regexp(t, `Machines: +2 \(protected 2; healthy 1, warning 1\)`, out)
	require.Regexp(t, `Agents: +1 connected of 2`, out)
	require.Contains(t, out, "disconnected: gone, last seen ")
	require.Contains(t, out, "(source of db)")
	require.Regexp(t, `(?m)^  db \(protected\) warning: .*source agent not connected`, out)
}

// TestFailedOverMachineIsNotHealthy: once failed over, a machine replicates
// nowhere: its health says so (a warning naming the state and the way
// back), never healthy.
func TestFailedOverMachineIsNotHealthy(t *testing.T) {
	f := newFailoverSetup(t, "--rp-every", "1h")
	f.protect(t, "m", 16<<20)
	var m machineProgress
	f.c.JSON(&m, "machines", "show", "m")
	require.Equal(t, "healthy", m.Health, m.HealthReason)

	// --wait without a terminal: plain lines, step by step, then the outcome.
	r := f.c.Ferry("failover", "m", "--wait")
	require.Equal(t, 0, r.Code, "%s%s", r.Stdout, r.Stderr)
	require.NotContains(t, r.Stdout, "\r")
	require.Regexp(t, `(?m)^\S+  prerequisites +succeeded$`, r.Stdout)
	require.Regexp(t, `(?m)^m: running, point \d+$`, r.Stdout)
	require.Regexp(t, `job \S+ succeeded\n$`, r.Stdout)
	m = machineProgress{}
	f.c.JSON(&m, "machines", "show", "m")
	require.Equal(t, "failed-over", m.State)
	require.Equal(t, "warning", m.Health)
	require.Contains(t, m.HealthReason, "not replicating: failed over")
	require.Contains(t, m.HealthReason, "ferry reprotect m")

	var e estate
	f.c.JSON(&e, "status")
	require.Equal(t, 1, e.Machines.ByState["failed-over"])
	require.Len(t, e.Attention, 1)
	require.Equal(t, "m", e.Attention[0].Name)
}

// TestControllerInfoLogsOneLinePerCycle: with a writer changing the disk
// and a target staging every point, the controller's info log says one
// line per cycle of the machine (point committed) besides its protection;
// the cycle's begin and the staging are debug lines.
func TestControllerInfoLogsOneLinePerCycle(t *testing.T) {
	f := newFailoverSetup(t, "--rp-every", "1s")
	const size = 16 << 20
	img, _ := f.protect(t, "m", size)
	w := StartWriter(t, []string{img}, size, 4, time.Millisecond)
	pointsDuring(t, f.c, "m", 1, 4, time.Minute)
	w.Stop()
	f.site.waitStaged(t, "m", f.c.Points("m")[len(f.c.Points("m"))-1].ID)

	perMsg := map[string]int{}
	debug := map[string]int{}
	msgRE := regexp.MustCompile(`level=(\w+) msg=("[^"]*"|\S+)`)
	for _, l := range strings.Split(f.c.Proc.Output(), "\n") {
		if !strings.Contains(l, " machine=m ") && !strings.HasSuffix(l, " machine=m") {
			continue
		}
		m := msgRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		msg := strings.Trim(m[2], `"`)
		if m[1] == "INFO" {
			perMsg[msg]++
		} else if m[1] == "DEBUG" {
			debug[msg]++
		}
	}
	t.Logf("info lines of machine m: %v; debug: %v", perMsg, debug)
	cycles := perMsg["point committed"]
	require.GreaterOrEqual(t, cycles, 4)
	delete(perMsg, "point committed")
	delete(perMsg, "machine protected")
	require.Empty(t, perMsg, "info lines besides one per cycle")
	require.GreaterOrEqual(t, debug["cycle begins"], cycles, "the begins are debug lines")
	require.Positive(t, debug["staged"], "staging is a debug line")
}

// TestFailoverWaitDrawsABar: `failover --wait` on a pseudo-terminal draws
// the move step's bar (its bytes move the staged replica to the fresh
// point), ends it full, and prints the outcome after it.
func TestFailoverWaitDrawsABar(t *testing.T) {
	if _, err := exec.LookPath("script"); err != nil {
		t.Skip("script (util-linux) is not installed: no pseudo-terminal to draw on")
	}
	f := newFailoverSetup(t, "--rp-every", "1h")
	const size = 128 << 20
	img, _ := f.protect(t, "m", size)
	// 96 MiB changed since the staged point: the failover's fresh cycle
	// ships them and its move step writes them at the target.
	change := make([]byte, 96<<20)
	_, _ = rand.Read(change)
	writeInChunks(t, img, change, 4<<20)

	line := strings.Join([]string{filepath.Join(f.c.Bin, "ferry"), "--admin", f.c.Admin, "failover", "m", "--wait"}, " ")
	out, err := exec.Command("script", "-qec", line, "/dev/null").Output()
	require.NoError(t, err, "script: %s", out)
	text := string(out)
	require.Regexp(t, `\r\S+  move +\[=*>? *\] +\d+%`, text, "the move step's bar: %q", text)
	require.Regexp(t, `\S+  move +\[=+\] 100%`, text, "the bar ends full: %q", text)
	require.Regexp(t, `(?m)^\S+  move +succeeded\r?$`, text, "the step's end on its own line: %q", text)
	require.Regexp(t, `job \S+ succeeded\r?\n$`, text)
	t.Logf("%d redraws of the move step's bar", len(regexp.MustCompile(`\r\S+  move +\[`).FindAllString(text, -1)))
}
