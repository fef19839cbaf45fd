package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/internal/testenv"
)

// TestPointsSayHowTheyWereMade: a running machine whose image sits on
// ramfs (no reflink, no snapshot view, and timestamps too coarse to tell
// a quiet file from a written one) gets inconsistent points read
// directly. `points list` shows each point's method (direct-read) and,
// for the inconsistent ones, why, naming the filesystem; `machines show`
// shows the newest point's method and reason; a failover to such a point
// is refused naming that reason and the ways out, and goes ahead with
// --allow-inconsistent.
func TestPointsSayHowTheyWereMade(t *testing.T) {
	// The status says the machine runs: nothing makes it crash-consistent.
	s, _ := protectRunningImage(t, testenv.MountMemory(t, "ramfs"), "web1", "ferry point notes ", "1h")
	p := pointsOf(t, s, "web1")[0]
	require.Equal(t, "inconsistent", p.Consistency)
	require.Equal(t, "direct-read", p.Method)
	require.Contains(t, p.Reason, "no reflink or snapshot view on this filesystem (ramfs)")
	require.Contains(t, p.Reason, "the machine is running")
	require.Contains(t, p.Reason, "timestamps on this filesystem are coarser than the writes")

	code, stdout, stderr := s.cli(t, "points", "list", "web1")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "METHOD")
	require.Contains(t, stdout, "direct-read")
	require.Contains(t, stdout, fmt.Sprintf("point %d is inconsistent: %s", p.ID, p.Reason))

	code, stdout, stderr = s.cli(t, "--json", "machines", "show", "web1")
	require.Equal(t, exitOK, code, stderr)
	var m api.Machine
	require.NoError(t, json.Unmarshal([]byte(stdout), &m))
	require.Equal(t, "direct-read", m.LastPointMethod)
	require.Equal(t, p.Reason, m.LastPointReason)
	code, stdout, stderr = s.cli(t, "machines", "show", "web1")
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "(direct-read)")
	require.Contains(t, stdout, "inconsistent: "+p.Reason)

	dir, power := t.TempDir(), filepath.Join(t.TempDir(), "power")
	code, _, stderr = s.cli(t, "targets", "add", "dr1", "--agent", "host1", "--dir", dir, "--driver", "exec",
		"--start", "touch "+power, "--stop", "rm -f "+power, "--status", "test -e "+power+" && echo running || echo stopped")
	require.Equal(t, exitOK, code, stderr)
	code, stdout, stderr = s.cli(t, "failover", "web1", "--target", "dr1", "--point", fmt.Sprint(p.ID), "--wait")
	require.NotEqual(t, exitOK, code, "an inconsistent point was taken: %s", stdout)
	require.Contains(t, stderr, fmt.Sprintf("point %d is inconsistent (direct-read: %s)", p.ID, p.Reason))
	require.Contains(t, stderr, "no point of this machine is consistent")
	require.Contains(t, stderr, "--allow-inconsistent")

	code, stdout, stderr = s.cli(t, "failover", "web1", "--target", "dr1", "--point", fmt.Sprint(p.ID), "--allow-inconsistent", "--wait")
	require.Equal(t, exitOK, code, "failover --allow-inconsistent: %s %s", stdout, stderr)
}

// TestQuietImagePoints: a running machine whose image sits on ext4 gets
// quiet-file points, crash-consistent, as long as nothing writes the
// image while a cycle reads it, and such a point exports the file's
// bytes; while a writer writes it all the time, a point is a direct read,
// inconsistent, saying that the image was written while it was read.
func TestQuietImagePoints(t *testing.T) {
	s, img := protectRunningImage(t, testenv.MountLoop(t, "ext4", 64<<20), "web2", "ferry quiet files ", "1s")
	p := pointsOf(t, s, "web2")[0]
	require.Equal(t, "crash-consistent", p.Consistency, "reason: %s", p.Reason)
	require.Equal(t, "quiet-file", p.Method)
	requireExport(t, s, "web2", p.ID, img)

	// A writer that never stops: a cycle reads while it writes.
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	require.NoError(t, err)
	defer f.Close()
	stop, stopped := make(chan struct{}), make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				stopped <- nil
				return
			default:
			}
			if _, err := f.WriteAt([]byte(fmt.Sprintf("write %08d", i)), int64(i%64)*4096); err != nil {
				stopped <- err
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	var written api.Point
	require.Eventually(t, func() bool {
		for _, q := range pointsOf(t, s, "web2") {
			if q.ID > p.ID && q.Consistency == "inconsistent" {
				written = q
				return true
			}
		}
		return false
	}, time.Minute, 100*time.Millisecond, "no inconsistent point while the image was written all the time")
	close(stop)
	require.NoError(t, <-stopped)
	require.Equal(t, "direct-read", written.Method)
	require.Contains(t, written.Reason, "the image was written while it was read (disk d: ")
	require.Contains(t, written.Reason, "no reflink or snapshot view on this filesystem (ext4), and the machine is running")

	// Quiet again: the next point is quiet-file and holds the writes.
	var quiet api.Point
	require.Eventually(t, func() bool {
		for _, q := range pointsOf(t, s, "web2") {
			if q.ID > written.ID && q.Method == "quiet-file" {
				quiet = q
				return true
			}
		}
		return false
	}, time.Minute, 100*time.Millisecond, "no quiet-file point after the writer stopped")
	require.Equal(t, "crash-consistent", quiet.Consistency)
	requireExport(t, s, "web2", quiet.ID, img)
}

// requireExport exports a point's disk d and requires it to equal the
// file at path.
func requireExport(t *testing.T, s *served, machine string, point int64, path string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "export")
	code, _, stderr := s.cli(t, "points", "export", machine, "--point", fmt.Sprint(point), "--out", out)
	require.Equal(t, exitOK, code, stderr)
	want, err := os.ReadFile(path)
	require.NoError(t, err)
	got, err := os.ReadFile(filepath.Join(out, "d.raw"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "point %d does not export the image's bytes", point)
}

// protectRunningImage serves a controller with one agent, host1, writes an
// image of text in mnt and protects it as machine, running (its status
// says so), with a policy of rpEvery, and waits for its first point.
func protectRunningImage(t *testing.T, mnt, machine, text, rpEvery string) (*served, string) {
	t.Helper()
	s := serve(t)
	s.startAgent(t, "host1")
	require.Eventually(t, func() bool {
		code, stdout, _ := s.cli(t, "--json", "agents", "list")
		var as []api.Agent
		return code == exitOK && json.Unmarshal([]byte(stdout), &as) == nil && len(as) == 1 && as[0].Connected
	}, 30*time.Second, 50*time.Millisecond, "the agent never showed as connected")
	img := filepath.Join(mnt, machine+".img")
	require.NoError(t, os.WriteFile(img, []byte(strings.Repeat(text, 1<<15)), 0o600))
	code, _, stderr := s.cli(t, "policies", "create", "p", "--rp-every", rpEvery, "--block-size", "64KiB")
	require.Equal(t, exitOK, code, stderr)
	code, _, stderr = s.cli(t, "protect", machine, "--agent", "host1", "--disk", "d="+img, "--policy", "p", "--status", "echo running")
	require.Equal(t, exitOK, code, stderr)
	require.Eventually(t, func() bool { return len(pointsOf(t, s, machine)) > 0 }, time.Minute, 100*time.Millisecond, "no point of %s", machine)
	return s, img
}
