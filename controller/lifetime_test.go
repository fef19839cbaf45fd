package controller_test

import (
	"context"
	"database/sql"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller"
	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
)

// startController runs a controller on data until the returned stop is
// called; stop returns Run's error once Run has returned.
func startController(t *testing.T, data, sock string) (*admin.Client, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	srv, err := controller.New(controller.Config{DataDir: data, Listen: "127.0.0.1:0", AdminSocket: sock,
		Logger: slog.New(slog.DiscardHandler), OnReady: func(string, string) { close(ready) }})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("the controller stopped: %v", err)
	}
	cl, err := admin.NewClient(admin.ClientConfig{Address: sock})
	require.NoError(t, err)
	return cl, func() error {
		cancel()
		select {
		case err := <-done:
			// Run returned: nothing it started may still run.
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			for _, g := range strings.Split(stacks, "\n\n") {
				for _, part := range []string{"ferry/controller.(*Server)", "ferry/controller/failover.", "ferry/controller/jobs.", "ferry/controller/alerts."} {
					require.NotContains(t, g, part, "a goroutine of the stopped controller still runs")
				}
			}
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return within 30s of its context ending")
			return nil
		}
	}
}

// TestRestartOnTheSameDataDirInOneProcess: a controller stopped while a
// job runs (retrying: its target agent is away) returns from Run only when
// everything it started has stopped, so a second controller on the same
// data directory, in the same process, opens it and resumes the job
// exactly once; so does a third.
func TestRestartOnTheSameDataDirInOneProcess(t *testing.T) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "ferry-rs-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	data, sock := filepath.Join(dir, "data"), filepath.Join(dir, "admin.sock")
	require.NoError(t, os.MkdirAll(data, 0o700))
	cat, err := catalog.Open(ctx, filepath.Join(data, "catalog.db"), nil)
	require.NoError(t, err)
	require.NoError(t, cat.EnsureDefaultPolicy(ctx))
	require.NoError(t, cat.AddToken(ctx, catalog.Token{ID: "t", SecretHash: []byte("h"), Expires: time.Now().Add(time.Hour), Uses: 1}))
	require.NoError(t, cat.ConsumeToken(ctx, "t", func([]byte) bool { return true }, func(tx *sql.Tx) error {
		return catalog.AddAgent(ctx, tx, catalog.Agent{ID: "ag-1", Name: "site", TokenID: "t", CertSerial: "s1", CertNotAfter: time.Now().Add(time.Hour), Enrolled: time.Now()})
	}))
	require.NoError(t, cat.AddTarget(ctx, "ag-1", api.Target{Name: "dr", Agent: "site", Dir: "/nonexistent/ferry-rs", Driver: "exec", Format: "raw", Exec: api.Driver{Start: "true"}}))
	require.NoError(t, cat.AddMachine(ctx, catalog.Machine{Name: "m", AgentID: "ag-1", Policy: catalog.DefaultPolicyName, Target: "dr",
		State: catalog.StateTestFailedOver, ActiveSite: "source", Direction: "forward",
		Failover: &api.FailoverInfo{Job: "job-old", Target: "dr", PointID: 1, Set: "test-job-old", TestName: "m-test"},
		Spec:     api.ProtectRequest{Machine: "m", Agent: "site", Disks: []api.DiskRef{{Name: "d", Path: "/dev/null"}}}}))
	require.NoError(t, cat.Close())

	cl, stop := startController(t, data, sock)
	j, err := cl.MachineAction(ctx, "cleanup", api.MachineActionRequest{Machine: "m"})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		j, err = cl.Job(ctx, j.ID)
		return err == nil && strings.Contains(strings.Join(j.Notes, " "), "retrying")
	}, 30*time.Second, 20*time.Millisecond, "the cleanup retries while the target agent is away")
	require.NoError(t, stop())

	for restart := 1; restart <= 2; restart++ {
		cl, stop = startController(t, data, sock)
		j, err = cl.Job(ctx, j.ID)
		require.NoError(t, err)
		require.Equal(t, api.JobRunning, j.State)
		resumed := 0
		for _, n := range j.Notes {
			if strings.Contains(n, "resumed after a controller restart") {
				resumed++
			}
		}
		require.Equal(t, restart, resumed, "each restart resumes the job once")
		m, err := cl.Machine(ctx, "m")
		require.NoError(t, err)
		require.Equal(t, []string{"jobs watch " + j.ID, "cancel " + j.ID + " --force"}, m.AllowedActions)
		require.NoError(t, stop())
	}
}
