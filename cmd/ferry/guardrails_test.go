package main

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// protectedMachine starts a controller and an agent "host1", protects
// machine with one disk image under policy p (1 h between points, so the
// initial sync is the only point) and waits for its first point.
func protectedMachine(t *testing.T, machine string) (*served, string) {
	t.Helper()
	s := serve(t)
	s.startAgent(t, "host1")
	require.Eventually(t, func() bool {
		code, stdout, _ := s.cli(t, "--json", "agents", "list")
		var as []api.Agent
		return code == exitOK && json.Unmarshal([]byte(stdout), &as) == nil && len(as) == 1 && as[0].Connected
	}, 30*time.Second, 50*time.Millisecond, "the agent never showed as connected")
	img := filepath.Join(t.TempDir(), machine+".img")
	require.NoError(t, os.WriteFile(img, []byte(strings.Repeat("ferry guardrails ", 1<<16)), 0o600))
	code, _, stderr := s.cli(t, "policies", "create", "p", "--rp-every", "1h", "--block-size", "64KiB")
	require.Equal(t, exitOK, code, stderr)
	code, _, stderr = s.cli(t, "protect", machine, "--agent", "host1", "--disk", "d="+img, "--policy", "p")
	require.Equal(t, exitOK, code, stderr)
	require.Eventually(t, func() bool {
		code, stdout, _ := s.cli(t, "--json", "points", "list", machine)
		var pts []api.Point
		return code == exitOK && json.Unmarshal([]byte(stdout), &pts) == nil && len(pts) > 0
	}, time.Minute, 100*time.Millisecond, "no point of %s", machine)
	return s, img
}

// TestJobsWatchExitsWithTheJobsOutcome: a failover of a machine without a
// target fails at its first step; `jobs watch` of that job exits 3 (the
// job failed), in text and in --json, as `failover --wait` does.
func TestJobsWatchExitsWithTheJobsOutcome(t *testing.T) {
	s, _ := protectedMachine(t, "web1")
	code, stdout, stderr := s.cli(t, "failover", "web1")
	require.Equal(t, exitOK, code, stderr)
	id := strings.TrimSpace(stdout)
	require.NotEmpty(t, id)

	code, stdout, stderr = s.cli(t, "jobs", "watch", id)
	require.Equal(t, exitJobFailed, code, "jobs watch of a failed job: stdout %q stderr %q", stdout, stderr)
	require.Contains(t, stderr, "has no target", "the failure's reason is said")

	code, stdout, stderr = s.cli(t, "--json", "jobs", "watch", id)
	require.Equal(t, exitJobFailed, code, stderr)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	var last api.Job
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &last))
	require.Equal(t, api.JobFailed, last.State)
	require.NotEmpty(t, jsonErrorCode(t, stderr), "the error is JSON too")
}

func jsonErrorCode(t *testing.T, stderr string) string {
	t.Helper()
	var e api.Error
	require.NoError(t, json.Unmarshal([]byte(stderr), &e), "stderr is not a JSON error: %q", stderr)
	return e.Code
}

// TestVerifyExitsNonZeroOnDamage: `verify` exits 0 on an intact
// repository and 1 once a pack is damaged, naming the damage.
func TestVerifyExitsNonZeroOnDamage(t *testing.T) {
	s, _ := protectedMachine(t, "web1")
	code, stdout, stderr := s.cli(t, "verify")
	require.Equal(t, exitOK, code, stderr)
	require.NotContains(t, stdout, "DAMAGED")

	var packs []string
	require.NoError(t, filepath.WalkDir(s.data, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".pack") {
			packs = append(packs, p)
		}
		return err
	}))
	require.NotEmpty(t, packs, "no pack file to damage under %s", s.data)
	for _, p := range packs {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		require.NoError(t, err)
		st, err := f.Stat()
		require.NoError(t, err)
		b := make([]byte, st.Size())
		_, err = f.ReadAt(b, 0)
		require.NoError(t, err)
		for i := len(b) / 4; i < len(b)*3/4; i += 512 { // the middle, where chunk data is
			b[i] ^= 0xff
		}
		_, err = f.WriteAt(b, 0)
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}
	code, stdout, stderr = s.cli(t, "verify", "web1")
	require.Equal(t, exitError, code, "verify of a damaged repository: stdout %q", stdout)
	require.Contains(t, stdout, "DAMAGED chunk")
	require.Contains(t, stderr, "damaged chunk(s)")
	code, _, stderr = s.cli(t, "--json", "verify")
	require.Equal(t, exitError, code)
	require.NotEmpty(t, jsonErrorCode(t, stderr))
}

// TestPointsListJSONAlwaysHasName: every point of `points list --json` has
// a "name" field, "" for an unnamed point.
func TestPointsListJSONAlwaysHasName(t *testing.T) {
	s, _ := protectedMachine(t, "web1")
	code, stdout, stderr := s.cli(t, "--json", "points", "list", "web1")
	require.Equal(t, exitOK, code, stderr)
	var pts []map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &pts))
	require.NotEmpty(t, pts)
	for _, p := range pts {
		name, ok := p["name"]
		require.True(t, ok, "a point without a name field: %v", p)
		require.Equal(t, "", name)
	}
	code, _, stderr = s.cli(t, "points", "label", "web1", "--point", "latest", "first")
	require.Equal(t, exitOK, code, stderr)
	_, stdout, _ = s.cli(t, "--json", "points", "list", "web1")
	require.NoError(t, json.Unmarshal([]byte(stdout), &pts))
	require.Equal(t, "first", pts[len(pts)-1]["name"])
}

// TestPolicyRetentionShorterThanIntervalIsRefused: a retention shorter than
// the time between points would keep no point; create and update refuse it
// (exit 1, code invalid, naming both settings) and change nothing. A
// retention of 0 (keep every point) stays allowed.
func TestPolicyRetentionShorterThanIntervalIsRefused(t *testing.T) {
	s := serve(t)
	code, _, stderr := s.cli(t, "--json", "policies", "create", "p", "--rp-every", "1h", "--retention", "30m")
	require.Equal(t, exitError, code)
	e := jsonError(t, stderr)
	require.Equal(t, api.CodeInvalid, e.Code)
	require.Contains(t, e.Message, "retention 30m")
	require.Contains(t, e.Message, "rp-every 1h")
	code, stdout, _ := s.cli(t, "--json", "policies", "list")
	require.Equal(t, exitOK, code)
	require.NotContains(t, stdout, `"name": "p"`, "a refused policy was stored")

	code, _, stderr = s.cli(t, "policies", "create", "p", "--rp-every", "1m", "--retention", "1h")
	require.Equal(t, exitOK, code, stderr)
	code, _, stderr = s.cli(t, "--json", "policies", "update", "p", "--rp-every", "2h")
	require.Equal(t, exitError, code)
	e = jsonError(t, stderr)
	require.Equal(t, api.CodeInvalid, e.Code)
	require.Contains(t, e.Message, "rp-every 2h")
	code, _, stderr = s.cli(t, "policies", "update", "p", "--retention", "30s")
	require.Equal(t, exitError, code)
	require.Contains(t, stderr, "shorter than")
	code, stdout, _ = s.cli(t, "--json", "policies", "list")
	require.Equal(t, exitOK, code)
	var ps []api.Policy
	require.NoError(t, json.Unmarshal([]byte(stdout), &ps))
	for _, p := range ps {
		if p.Name == "p" {
			require.Equal(t, time.Minute, p.RPEvery.Std(), "a refused update changed the policy")
			require.Equal(t, time.Hour, p.Retention.Std(), "a refused update changed the policy")
		}
	}
	code, _, stderr = s.cli(t, "policies", "update", "p", "--retention", "0s")
	require.Equal(t, exitOK, code, "retention 0 keeps every point: %s", stderr)
}

// TestProtectRefusesADiskAnotherMachineProtects: protecting the path
// another machine already protects on the same agent is refused with the
// other machine's name; another path on that agent is accepted.
func TestProtectRefusesADiskAnotherMachineProtects(t *testing.T) {
	s, img := protectedMachine(t, "web1")
	code, _, stderr := s.cli(t, "--json", "protect", "web2", "--agent", "host1", "--disk", "os="+img)
	require.Equal(t, exitError, code)
	e := jsonError(t, stderr)
	require.Equal(t, api.CodeConflict, e.Code)
	require.Contains(t, e.Message, "machine web1")
	require.Contains(t, e.Message, img)
	code, stdout, _ := s.cli(t, "--json", "machines", "list")
	require.Equal(t, exitOK, code)
	require.NotContains(t, stdout, "web2", "the refused machine was stored")

	other := filepath.Join(t.TempDir(), "web2.img")
	require.NoError(t, os.WriteFile(other, make([]byte, 1<<20), 0o600))
	code, _, stderr = s.cli(t, "protect", "web2", "--agent", "host1", "--disk", "os="+other, "--policy", "p")
	require.Equal(t, exitOK, code, stderr)
}
