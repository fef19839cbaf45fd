package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/controller/api"
)

func pointsOf(t *testing.T, s *served, machine string) []api.Point {
	t.Helper()
	code, stdout, stderr := s.cli(t, "--json", "points", "list", machine)
	require.Equal(t, exitOK, code, stderr)
	var pts []api.Point
	require.NoError(t, json.Unmarshal([]byte(stdout), &pts))
	return pts
}

func pointIDs(ps []api.Point) []int64 {
	out := []int64{}
	for _, p := range ps {
		out = append(out, p.ID)
	}
	return out
}

// requireForceRefusal checks a destructive verb run without --force: exit
// 2, an error naming --force, and each of want on stdout.
func requireForceRefusal(t *testing.T, code int, stdout, stderr string, want ...string) {
	t.Helper()
	require.Equal(t, exitUsage, code, "stdout %q stderr %q", stdout, stderr)
	require.Contains(t, stderr, "--force")
	require.Contains(t, stderr, "nothing was changed")
	for _, w := range want {
		require.Contains(t, stdout, w)
	}
}

// TestDestructiveVerbsNeedForce: a machine with several points is failed
// over to its oldest point. `commit` without --force lists exactly the
// points the commit deletes (ids, times, sizes; in --json the same split
// the job then makes), deletes nothing and exits 2 naming --force; with
// --force the commit leaves exactly the points it said it keeps.
// `unprotect --delete-points` and `targets remove` behave alike, and
// `agents revoke` without --force warns and revokes.
func TestDestructiveVerbsNeedForce(t *testing.T) {
	s, _ := protectedMachine(t, "web1")
	code, _, stderr := s.cli(t, "policies", "create", "fast", "--rp-every", "1s", "--block-size", "64KiB")
	require.Equal(t, exitOK, code, stderr)
	code, _, stderr = s.cli(t, "machines", "update", "web1", "--policy", "fast")
	require.Equal(t, exitOK, code, stderr)
	require.Eventually(t, func() bool { return len(pointsOf(t, s, "web1")) >= 4 }, time.Minute, 100*time.Millisecond)

	dir, power := t.TempDir(), filepath.Join(t.TempDir(), "power")
	code, _, stderr = s.cli(t, "targets", "add", "dr1", "--agent", "host1", "--dir", dir, "--driver", "exec",
		"--start", "touch "+power, "--stop", "rm -f "+power, "--status", "test -e "+power+" && echo running || echo stopped")
	require.Equal(t, exitOK, code, stderr)
	first := pointsOf(t, s, "web1")[0]
	code, stdout, stderr := s.cli(t, "failover", "web1", "--target", "dr1", "--point", fmt.Sprint(first.ID), "--allow-inconsistent", "--wait")
	require.Equal(t, exitOK, code, "failover: %s %s", stdout, stderr)

	// commit: the refusal lists what goes.
	before := pointsOf(t, s, "web1")
	require.Greater(t, len(before), 2)
	wantDeleted := pointIDs(before[1 : len(before)-1]) // all but the point it runs and the newest
	code, stdout, stderr = s.cli(t, "commit", "web1")
	requireForceRefusal(t, code, stdout, stderr, fmt.Sprintf("would delete %d recovery point(s)", len(wantDeleted)))
	for _, p := range before[1 : len(before)-1] {
		require.Contains(t, stdout, fmtTime(p.Time), "the refusal lists point %d's time", p.ID)
	}
	code, stdout, stderr = s.cli(t, "--json", "commit", "web1")
	require.Equal(t, exitUsage, code)
	require.Equal(t, "usage", jsonErrorCode(t, stderr))
	require.Contains(t, jsonError(t, stderr).Message, "--force")
	var preview api.CommitPreview
	require.NoError(t, json.Unmarshal([]byte(stdout), &preview))
	require.Equal(t, wantDeleted, pointIDs(preview.Deleted))
	require.Equal(t, []int64{first.ID, before[len(before)-1].ID}, pointIDs(preview.Kept))
	require.Equal(t, pointIDs(before), pointIDs(pointsOf(t, s, "web1")), "a refused commit deleted points")

	code, stdout, stderr = s.cli(t, "commit", "web1", "--force", "--wait")
	require.Equal(t, exitOK, code, "commit --force: %s %s", stdout, stderr)
	require.Equal(t, pointIDs(preview.Kept), pointIDs(pointsOf(t, s, "web1")), "the commit kept other points than it said")

	// unprotect --delete-points.
	kept := pointsOf(t, s, "web1")
	code, stdout, stderr = s.cli(t, "unprotect", "web1", "--delete-points")
	requireForceRefusal(t, code, stdout, stderr, fmt.Sprintf("delete all %d of its recovery point(s)", len(kept)))
	for _, p := range kept {
		require.Contains(t, stdout, fmt.Sprint(p.ID))
		require.Contains(t, stdout, fmtTime(p.Time))
	}
	code, _, stderr = s.cli(t, "--json", "machines", "show", "web1")
	require.Equal(t, exitOK, code, "a refused unprotect removed the machine: %s", stderr)
	require.Equal(t, pointIDs(kept), pointIDs(pointsOf(t, s, "web1")))
	code, _, stderr = s.cli(t, "unprotect", "web1", "--delete-points", "--force")
	require.Equal(t, exitOK, code, stderr)
	code, _, _ = s.cli(t, "--json", "points", "list", "web1")
	require.Equal(t, exitError, code, "the points of web1 are still listed")

	// targets remove (dr1 still runs the committed machine's disks: the
	// files stay, the record goes).
	code, stdout, stderr = s.cli(t, "targets", "remove", "dr1")
	requireForceRefusal(t, code, stdout, stderr, "targets remove dr1 would delete the target", "dir:    "+dir, "agent:  host1")
	code, stdout, _ = s.cli(t, "--json", "targets", "list")
	require.Equal(t, exitOK, code)
	require.Contains(t, stdout, `"dr1"`, "a refused remove removed the target")
	code, _, stderr = s.cli(t, "targets", "remove", "dr1", "--force")
	require.Equal(t, exitOK, code, stderr)
	code, stdout, _ = s.cli(t, "--json", "targets", "list")
	require.Equal(t, exitOK, code)
	require.NotContains(t, stdout, `"dr1"`)

	// agents revoke: warns without --force, and revokes.
	enrollOnly(t, s, "host2")
	enrollOnly(t, s, "host3")
	code, _, stderr = s.cli(t, "agents", "revoke", "host2")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stderr, "the next release requires --force")
	code, _, stderr = s.cli(t, "agents", "revoke", "host3", "--force")
	require.Equal(t, exitOK, code, stderr)
	require.Empty(t, stderr)
	code, stdout, _ = s.cli(t, "--json", "agents", "list")
	require.Equal(t, exitOK, code)
	var as []api.Agent
	require.NoError(t, json.Unmarshal([]byte(stdout), &as))
	revoked := map[string]bool{}
	for _, a := range as {
		revoked[a.Name] = a.Revoked
	}
	require.Equal(t, map[string]bool{"host1": false, "host2": true, "host3": true}, revoked)
}

// enrollOnly enrols an agent without running it.
func enrollOnly(t *testing.T, s *served, name string) {
	t.Helper()
	code, stdout, stderr := s.cli(t, "--json", "tokens", "create")
	require.Equal(t, exitOK, code, stderr)
	var tok api.Token
	require.NoError(t, json.Unmarshal([]byte(stdout), &tok))
	_, err := agent.Enroll(context.Background(), agent.EnrollConfig{Controller: s.agent, Token: tok.Token, Name: name,
		StateDir: filepath.Join(t.TempDir(), name)})
	require.NoError(t, err)
}

// TestMachinesUpdateRenameDuringInitialSync: a machine whose initial sync
// has made no point yet (the bandwidth is limited to 256 KiB/s for 8 MiB)
// is renamed: its first point is made under the new name, the old name is
// gone, and the point holds the disk's bytes. Renaming it back once it has
// a point is refused, saying why, and changes nothing; so is an update of
// nothing, and adding a disk another machine protects (the protect rule).
func TestMachinesUpdateRenameDuringInitialSync(t *testing.T) {
	s := serve(t)
	s.startAgent(t, "host1")
	require.Eventually(t, func() bool {
		code, stdout, _ := s.cli(t, "--json", "agents", "list")
		var as []api.Agent
		return code == exitOK && json.Unmarshal([]byte(stdout), &as) == nil && len(as) == 1 && as[0].Connected
	}, 30*time.Second, 50*time.Millisecond)
	img := filepath.Join(t.TempDir(), "web1.img")
	writeRandom(t, img, 8<<20)
	code, _, stderr := s.cli(t, "policies", "create", "slow", "--rp-every", "1h", "--bandwidth", "256KiB/s", "--block-size", "64KiB")
	require.Equal(t, exitOK, code, stderr)
	code, _, stderr = s.cli(t, "protect", "web1", "--agent", "host1", "--disk", "d="+img, "--policy", "slow")
	require.Equal(t, exitOK, code, stderr)

	// Renamed, and moved to an unthrottled policy of the same block size in
	// the same update.
	code, _, stderr = s.cli(t, "policies", "create", "fastp", "--rp-every", "1h", "--block-size", "64KiB")
	require.Equal(t, exitOK, code, stderr)
	code, stdout, stderr := s.cli(t, "machines", "update", "web1", "--rename", "web2", "--policy", "fastp")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "renamed web1 to web2: the initial sync starts again under the new name")
	require.Contains(t, stdout, "policy fastp")
	code, _, _ = s.cli(t, "machines", "show", "web1")
	require.Equal(t, exitError, code, "web1 is still there")
	require.Eventually(t, func() bool {
		code, stdout, _ := s.cli(t, "--json", "points", "list", "web2")
		var pts []api.Point
		return code == exitOK && json.Unmarshal([]byte(stdout), &pts) == nil && len(pts) == 1
	}, 2*time.Minute, 100*time.Millisecond, "web2 never got its first point")
	out := t.TempDir()
	code, _, stderr = s.cli(t, "points", "export", "web2", "--point", "latest", "--out", out)
	require.Equal(t, exitOK, code, stderr)
	requireSameBytes(t, img, filepath.Join(out, "d.raw"))
	code, _, _ = s.cli(t, "--json", "points", "list", "web1")
	require.Equal(t, exitError, code, "points are still stored under the old name")

	code, _, stderr = s.cli(t, "--json", "machines", "update", "web2", "--rename", "web1")
	require.Equal(t, exitError, code)
	e := jsonError(t, stderr)
	require.Equal(t, api.CodeFailedPrecondition, e.Code)
	require.Contains(t, e.Message, "machine web2 cannot be renamed: it has 1 recovery point(s) stored under its name")
	code, _, _ = s.cli(t, "machines", "show", "web2")
	require.Equal(t, exitOK, code)

	// A policy of another block size deletes the points: refused without
	// --force, naming them; with it every disk is sent again.
	pts := pointsOf(t, s, "web2")
	code, _, stderr = s.cli(t, "policies", "create", "big", "--rp-every", "1h", "--block-size", "1MiB")
	require.Equal(t, exitOK, code, stderr)
	code, _, stderr = s.cli(t, "machines", "update", "web2", "--policy", "big")
	require.Equal(t, exitError, code)
	require.Contains(t, stderr, fmt.Sprintf("deletes its 1 recovery point(s) (ids %d)", pts[0].ID))
	require.Contains(t, stderr, "--force")
	require.Equal(t, pointIDs(pts), pointIDs(pointsOf(t, s, "web2")))
	code, stdout, stderr = s.cli(t, "machines", "update", "web2", "--policy", "big", "--force")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "block size 64KiB → 1MiB: every disk is resynced in full")
	require.Eventually(t, func() bool {
		ps := pointsOf(t, s, "web2")
		return len(ps) == 1 && ps[0].ID > pts[0].ID
	}, 2*time.Minute, 100*time.Millisecond, "web2 never got a point in the new block size")
	out = t.TempDir()
	code, _, stderr = s.cli(t, "points", "export", "web2", "--point", "latest", "--out", out)
	require.Equal(t, exitOK, code, stderr)
	requireSameBytes(t, img, filepath.Join(out, "d.raw"))

	// Driver and snapshot settings, one by one; the rest stays.
	code, _, stderr = s.cli(t, "machines", "update", "web2", "--start", "echo start", "--status", "echo running", "--freeze", "/srv")
	require.Equal(t, exitOK, code, stderr)
	code, _, stderr = s.cli(t, "machines", "update", "web2", "--status", "echo stopped")
	require.Equal(t, exitOK, code, stderr)
	code, stdout, stderr = s.cli(t, "--json", "machines", "show", "web2")
	require.Equal(t, exitOK, code, stderr)
	var shown api.Machine
	require.NoError(t, json.Unmarshal([]byte(stdout), &shown))
	require.Equal(t, api.Driver{Start: "echo start", Status: "echo stopped"}, shown.Driver)
	require.Equal(t, []string{"/srv"}, shown.Freeze)
	require.Equal(t, "big", shown.Policy)
	code, _, stderr = s.cli(t, "machines", "update", "web2", "--pause", "kill -STOP 1")
	require.Equal(t, exitError, code)
	require.Contains(t, stderr, "--pause and --resume go together")

	code, _, stderr = s.cli(t, "machines", "update", "web2")
	require.Equal(t, exitUsage, code)
	require.Contains(t, stderr, "nothing to change")

	code, _, stderr = s.cli(t, "protect", "other", "--agent", "host1", "--disk", "o="+writeRandomTemp(t), "--policy", "slow")
	require.Equal(t, exitOK, code, stderr)
	code, _, stderr = s.cli(t, "--json", "machines", "update", "other", "--add-disk", "x="+img)
	require.Equal(t, exitError, code)
	e = jsonError(t, stderr)
	require.Equal(t, api.CodeConflict, e.Code)
	require.True(t, strings.Contains(e.Message, "already protected by machine web2"), e.Message)
}

// writeRandom writes size random (incompressible) bytes to path.
func writeRandom(t *testing.T, path string, size int) {
	t.Helper()
	b := make([]byte, size)
	_, err := rand.Read(b)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, b, 0o600))
}

func writeRandomTemp(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	writeRandom(t, p, 1<<20)
	return p
}

func requireSameBytes(t *testing.T, want, got string) {
	t.Helper()
	a, err := os.ReadFile(want)
	require.NoError(t, err)
	b, err := os.ReadFile(got)
	require.NoError(t, err)
	require.True(t, bytes.Equal(a, b), "%s differs from %s", got, want)
}
