package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

var (
	cycleBeginsRE    = regexp.MustCompile(`msg="cycle begins".*? machine=vm pending=(\d+) `)
	pointCommittedRE = regexp.MustCompile(`msg="point committed".*? machine=vm `)
	agentConnectedRE = regexp.MustCompile(`msg="agent connected"`)
)

// TestCutsMidCycleKeepPointsPrefixesOfTheWriteLog: the agent reaches the
// controller through a TCP proxy; while one writer logs every write to a
// 64 MiB image on XFS, the proxy cuts the agent's connection again and
// again, each time while a cycle is open at the controller (more "cycle
// begins" than "point committed") and data is flowing (≥ 256 KiB went up
// in the last 50 ms): at least 6 such cuts. After each cut the agent
// reconnects and resumes the pending point in a new session. Every point
// made — during the cuts and after (at least two, one of them resumed by a
// new session after a cut) — equals the initial image plus
// exactly the first N logged writes, N never decreasing: no write of a
// dropped session lands after a newer session's write of the same block.
func TestCutsMidCycleKeepPointsPrefixesOfTheWriteLog(t *testing.T) {
	mnt := testenv.MountLoop(t, "xfs", 512<<20)
	const size = 64 << 20
	img := filepath.Join(mnt, "disk.img")
	initial := makeImage(t, img, 61, size)

	c := StartController(t)
	proxy := proxyTo(t, c.Addr)
	EnrollAgent(t, c, proxy.Addr(), "src")
	c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
	c.MustFerry("protect", "vm", "--agent", "src", "--disk", "root="+img, "--policy", "fast")
	first := c.WaitPoint("vm", 0, 2*time.Minute)

	w := StartWriter(t, []string{img}, size, 7, time.Millisecond)
	const wantCuts = 6
	cuts := 0
	deadline := time.Now().Add(3 * time.Minute)
	samples, flowing, opened := 0, 0, 0
	for cuts < wantCuts {
		require.True(t, time.Now().Before(deadline), "only %d mid-cycle cuts in 3 minutes (%d samples: %d with a cycle open, %d with data flowing)",
			cuts, samples, opened, flowing)
		out := c.Proc.Output()
		open := len(cycleBeginsRE.FindAllStringIndex(out, -1)) > len(pointCommittedRE.FindAllStringIndex(out, -1))
		up0, _ := proxy.Bytes()
		time.Sleep(50 * time.Millisecond) // sampling the flow, not synchronising
		up1, _ := proxy.Bytes()
		samples++
		if open {
			opened++
		}
		if up1-up0 >= 256<<10 {
			flowing++
		}
		if !open || up1-up0 < 256<<10 {
			continue
		}
		connected := len(agentConnectedRE.FindAllStringIndex(c.Proc.Output(), -1))
		proxy.Cut()
		cuts++
		t.Logf("cut %d: a cycle was open and %d KiB went up in the last 50 ms", cuts, (up1-up0)>>10)
		require.Eventually(t, func() bool {
			return len(agentConnectedRE.FindAllStringIndex(c.Proc.Output(), -1)) > connected
		}, time.Minute, 20*time.Millisecond, "the agent reconnects after cut %d", cuts)
	}
	// A few points after the last cut, with the writer still running.
	var last int64
	if ps := c.Points("vm"); len(ps) > 0 {
		last = ps[len(ps)-1].ID
	}
	pointsDuring(t, c, "vm", last, 2, 2*time.Minute)
	w.Stop()
	require.NoError(t, w.Err)
	log := w.Log()

	pts := pointsDuring(t, c, "vm", first.ID, 2, time.Second)
	t.Logf("writer made %d writes; %d cuts; checking %d points", len(log), cuts, len(pts))
	// The cuts hit cycles that a new session resumed: some pending point
	// got more than one cycle.
	begins := map[string]int{}
	resumed := 0
	for _, m := range cycleBeginsRE.FindAllStringSubmatch(c.Proc.Output(), -1) {
		if begins[m[1]]++; begins[m[1]] == 2 {
			resumed++
		}
	}
	t.Logf("cycles per pending point: %v", begins)
	require.Positive(t, resumed, "no pending point was resumed by a new session")
	n := -1
	for _, p := range pts {
		dir := c.Export("vm", p.ID)
		k := PrefixLength(t, dir, []string{"root"}, [][]byte{initial}, log, 7)
		t.Logf("point %d = initial + first %d writes", p.ID, k)
		require.GreaterOrEqual(t, k, n, "a later point never shows fewer writes")
		n = k
		os.RemoveAll(dir)
	}
}
