package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// drillRun is a drill run's report as `drills run --json` prints it.
type drillRun struct {
	ID     int64  `json:"id"`
	Point  int64  `json:"point"`
	Result string `json:"result"`
	Error  string `json:"error"`
	Phases []struct {
		Name    string  `json:"name"`
		Result  string  `json:"result"`
		Seconds float64 `json:"seconds"`
		Detail  string  `json:"detail"`
	} `json:"phases"`
	ConsoleTail string   `json:"console_tail"`
	ProbeOutput string   `json:"probe_output"`
	Jobs        []string `json:"jobs"`
}

func (r drillRun) phase(name string) (string, float64) {
	for _, p := range r.Phases {
		if p.Name == name {
			return p.Result, p.Seconds
		}
	}
	return "absent", 0
}

type pointV struct {
	ID       int64 `json:"id"`
	Verified bool  `json:"verified"`
}

func (s *libvirtSite) verified(t *testing.T, machine string) map[int64]bool {
	t.Helper()
	var ps []pointV
	s.c.JSON(&ps, "points", "list", machine)
	out := map[int64]bool{}
	for _, p := range ps {
		out[p.ID] = p.Verified
	}
	return out
}

func (s *libvirtSite) machine(t *testing.T, name string) (health, reason string, verifiedSeconds *float64) {
	t.Helper()
	var ms []struct {
		Name            string   `json:"name"`
		Health          string   `json:"health"`
		HealthReason    string   `json:"health_reason"`
		VerifiedSeconds *float64 `json:"verified_seconds"`
	}
	s.c.JSON(&ms, "machines", "list")
	for _, m := range ms {
		if m.Name == name {
			return m.Health, m.HealthReason, m.VerifiedSeconds
		}
	}
	t.Fatalf("machine %s not listed", name)
	return
}

// runDrill runs a drill and returns its report and the CLI's exit code.
func (s *libvirtSite) runDrill(t *testing.T, name string) (drillRun, int) {
	t.Helper()
	start := time.Now()
	r := s.c.Ferry("drills", "run", name, "--json")
	var run drillRun
	require.NoError(t, json.Unmarshal([]byte(r.Stdout), &run), "drills run %s: %s %s", name, r.Stdout, r.Stderr)
	t.Logf("drill %s run %d on point %d: %s in %s (%s)", name, run.ID, run.Point, run.Result, time.Since(start).Round(time.Second), run.Error)
	return run, r.Code
}

// TestDrillBootsLibvirt is the acceptance test of boot drills: a bootable
// Debian disk (built at test time, cached) with a file the test wrote is
// protected to a libvirt target; a drill boots its point under qemu
// software emulation, the guest's marker service prints the file's hash on
// the serial console, the probe finds it there, the drill cleans up (no
// domain, network or file left) and the point is verified. The source's
// first MiB is then zeroed and a new point taken: the drill of that point
// fails with the console tail in its report, the point is not verified,
// health is degraded with the reason, and latest-verified still names the
// first point. Finally a failover --point latest-verified started while a
// drill runs cancels the drill (which cleans up), notes it, and starts the
// machine on the verified point's bytes. Under make soak (FERRY_SOAK=1)
// the good drill runs five times more.
func TestDrillBootsLibvirt(t *testing.T) {
	testenv.RequireRoot(t)
	s := newLibvirtSite(t)
	img := filepath.Join(s.mnt, "vm.img")
	bootDisk(t, img)
	hash := writeMarker(t, img)
	kept := keepCopy(t, img)

	s.c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--policy", "p", "--target", "dr",
		"--cpus", "1", "--memory", "384MiB", "--nic", "lan")
	p1 := s.c.WaitPoint("vm", 0, 5*time.Minute)
	(&Site{Dir: s.dir}).waitStaged(t, "vm", p1.ID)
	files := s.files(t)

	// The probe reaches the booted guest through its serial console: the
	// marker line is printed by the guest's own service, from its disk.
	probe := `grep -q "FERRY-MARKER ` + hash + `" "$FERRY_CONSOLE" && echo "marker $FERRY_MACHINE point $FERRY_POINT ok"`
	s.c.MustFerry("drills", "create", "boot", "--machine", "vm", "--every", "24h", "--timeout", "6m",
		"--up-marker", "FERRY-MARKER", "--probe", probe)
	run, code := s.runDrill(t, "boot")
	require.Equal(t, 0, code, "the drill passes: %+v", run)
	require.Equal(t, "passed", run.Result)
	// The test failover of "latest" takes a fresh cycle when the source
	// is reachable: the drilled point is at least the first one.
	require.GreaterOrEqual(t, run.Point, p1.ID)
	good := run.Point
	for _, ph := range []string{"test-failover", "wait-up", "probe", "cleanup"} {
		res, _ := run.phase(ph)
		require.Equal(t, "ok", res, "phase %s: %+v", ph, run.Phases)
	}
	_, up := run.phase("wait-up")
	t.Logf("boot under TCG (test failover started to marker on the console): %.1f s", up)
	require.Contains(t, run.ConsoleTail, "FERRY-MARKER "+hash, "the guest printed the hash of the file the test wrote")
	require.Contains(t, run.ProbeOutput, "marker vm point ")
	require.Len(t, run.Jobs, 2, "a test failover and its cleanup")
	require.NotContains(t, s.domains(t), "vm-test", "the drill cleaned up its domain")
	require.Empty(t, s.domains(t))
	require.ElementsMatch(t, s.nets, s.networks(t), "the drill left no network")
	require.ElementsMatch(t, files, s.files(t), "the drill left no file (console log included)")
	for id, v := range s.verified(t, "vm") {
		require.Equal(t, id == good, v, "only the drilled point %d is verified (point %d)", good, id)
	}
	health, _, vs := s.machine(t, "vm")
	require.NotNil(t, vs, "machines list shows the verified point's age")
	require.Equal(t, "healthy", health)
	show := s.c.MustFerry("drills", "show", "boot")
	require.Contains(t, show, "passed, point")
	require.Contains(t, show, "wait-up")

	// The soak variant (make soak, FERRY_SOAK=1) drills the same disk
	// again and again, each on a fresh point: every run passes, cleans up
	// and verifies its point; the boot times are logged.
	if os.Getenv("FERRY_SOAK") == "1" {
		for i := range 5 {
			again, code := s.runDrill(t, "boot")
			require.Equal(t, 0, code, "soak drill %d: %+v", i, again)
			require.Greater(t, again.Point, good, "each drill takes a fresh point")
			good = again.Point
			_, up := again.phase("wait-up")
			t.Logf("soak drill %d: boot under TCG %.1f s", i, up)
			require.Empty(t, s.domains(t))
			require.True(t, s.verified(t, "vm")[good])
		}
	}

	// Damage the boot sector and take a point of it.
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(make([]byte, 1<<20), 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	s.c.MustFerry("policies", "update", "p", "--rp-every", "2s")
	p2 := s.c.WaitPoint("vm", good, 3*time.Minute)
	s.c.MustFerry("policies", "update", "p", "--rp-every", "1h")
	s.c.MustFerry("drills", "create", "broken", "--machine", "vm", "--every", "24h", "--timeout", "75s",
		"--up-marker", "FERRY-MARKER", "--probe", probe)
	bad, code := s.runDrill(t, "broken")
	require.Equal(t, 3, code, "a failed drill exits 3: %+v", bad)
	require.Equal(t, "failed", bad.Result)
	require.GreaterOrEqual(t, bad.Point, p2.ID, "the drill took the newest point")
	res, _ := bad.phase("wait-up")
	require.Equal(t, "failed", res, "%+v", bad.Phases)
	res, _ = bad.phase("cleanup")
	require.Equal(t, "ok", res, "cleanup runs after a failure")
	require.NotEmpty(t, bad.ConsoleTail, "the report keeps the console tail (the firmware's boot failure)")
	require.NotContains(t, bad.ConsoleTail, "FERRY-MARKER")
	t.Logf("console tail of the damaged point:\n%s", bad.ConsoleTail)
	require.Empty(t, s.domains(t), "the failed drill cleaned up")
	v := s.verified(t, "vm")
	require.True(t, v[good])
	require.False(t, v[bad.Point], "the damaged point is not verified")
	require.False(t, v[p2.ID])
	health, reason, _ := s.machine(t, "vm")
	require.Equal(t, "degraded", health)
	require.Contains(t, reason, "drill broken failed on point")

	// A disaster beats a drill: failover --point latest-verified while a
	// drill boots the newest (damaged) point.
	r := s.c.Ferry("drills", "run", "boot", "--no-wait")
	require.Equal(t, 0, r.Code, r.Stderr)
	require.Eventually(t, func() bool {
		for _, d := range s.domains(t) {
			if d == "vm-test" {
				return true
			}
		}
		return false
	}, 3*time.Minute, 500*time.Millisecond, "the drill started its test machine")
	j := s.c.runJob(t, 0, "failover", "vm", "--point", "latest-verified")
	require.Equal(t, good, j.Machines[0].PointID, "latest-verified is the drilled point, not the newer damaged one")
	require.Contains(t, strings.Join(j.Machines[0].Notes, "\n"), "drill boot was running on vm: cancelled and cleaned up")
	var detail struct {
		Runs []drillRun `json:"runs"`
	}
	s.c.JSON(&detail, "drills", "show", "boot")
	require.Equal(t, "cancelled", detail.Runs[0].Result, "the failover cancelled the drill")
	res, _ = detail.Runs[0].phase("cleanup")
	require.Equal(t, "ok", res)
	require.NotContains(t, s.domains(t), "vm-test")
	_, st := s.domain(t, "vm")
	require.Equal(t, golibvirt.DomainRunning, st)
	requireSameFile(t, kept, filepath.Join(s.dir, "vm", "live", "d.raw"))
}
