package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller"
	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/lifecycle"
)

// cliArgs is how the CLI asks for each action of the lifecycle table.
func cliArgs(a lifecycle.Action, machine, out string) []string {
	switch a {
	case lifecycle.Failover:
		return []string{"failover", machine}
	case lifecycle.TestFailover:
		return []string{"failover", machine, "--test"}
	case lifecycle.PlannedFailover:
		return []string{"failover", machine, "--planned"}
	case lifecycle.Commit:
		return []string{"commit", machine, "--force"}
	case lifecycle.ChangePoint:
		return []string{"change-point", machine, "--point", "latest"}
	case lifecycle.Cleanup:
		return []string{"cleanup", machine}
	case lifecycle.Export:
		return []string{"points", "export", machine, "--point", "latest", "--out", out}
	case lifecycle.Unprotect:
		return []string{"unprotect", machine}
	case lifecycle.Reprotect:
		return []string{"reprotect", machine}
	case lifecycle.Failback:
		return []string{"failback", machine}
	case lifecycle.UnplannedFailback:
		return []string{"failback", machine, "--unplanned"}
	case lifecycle.TestFailback:
		return []string{"failback", machine, "--test"}
	case lifecycle.Revert:
		return []string{"revert", machine}
	}
	panic("no CLI form for action " + string(a))
}

// apiCall asks the admin API directly for an action.
func apiCall(ctx context.Context, cl *admin.Client, a lifecycle.Action, machine string) error {
	var err error
	switch a {
	case lifecycle.Failover:
		_, err = cl.Failover(ctx, api.FailoverRequest{Machine: machine})
	case lifecycle.TestFailover:
		_, err = cl.Failover(ctx, api.FailoverRequest{Machine: machine, Test: true})
	case lifecycle.PlannedFailover:
		_, err = cl.Failover(ctx, api.FailoverRequest{Machine: machine, Planned: true})
	case lifecycle.Commit:
		_, err = cl.MachineAction(ctx, "commit", api.MachineActionRequest{Machine: machine})
	case lifecycle.ChangePoint:
		_, err = cl.MachineAction(ctx, "change-point", api.MachineActionRequest{Machine: machine, Point: "latest"})
	case lifecycle.Cleanup:
		_, err = cl.MachineAction(ctx, "cleanup", api.MachineActionRequest{Machine: machine})
	case lifecycle.Export:
		_, err = cl.ExportManifest(ctx, machine, "latest", nil)
	case lifecycle.Unprotect:
		err = cl.Unprotect(ctx, machine, false)
	case lifecycle.Reprotect:
		_, err = cl.MachineAction(ctx, "reprotect", api.MachineActionRequest{Machine: machine})
	case lifecycle.Failback:
		_, err = cl.MachineAction(ctx, "failback", api.MachineActionRequest{Machine: machine})
	case lifecycle.UnplannedFailback:
		_, err = cl.MachineAction(ctx, "failback", api.MachineActionRequest{Machine: machine, Unplanned: true})
	case lifecycle.TestFailback:
		_, err = cl.MachineAction(ctx, "failback", api.MachineActionRequest{Machine: machine, Test: true})
	case lifecycle.Revert:
		_, err = cl.MachineAction(ctx, "revert", api.MachineActionRequest{Machine: machine})
	default:
		panic("no API call for action " + string(a))
	}
	return err
}

// TestLifecycleTableIsWhatTheAPIAndCLIRefuse enumerates the lifecycle
// table: for every (state, action) pair a machine in that state is asked
// for the action through the admin API and through the CLI (run against a
// real controller over its admin socket). Both refuse exactly the pairs
// the table refuses, with the table's reason and what to do instead, and
// `machines show` offers exactly the actions the table allows.
func TestLifecycleTableIsWhatTheAPIAndCLIRefuse(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "ferry-lc-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	data := filepath.Join(dir, "data")
	require.NoError(t, os.MkdirAll(data, 0o700))

	// The catalog as a controller left it: an agent, a target, and a
	// machine per (state, action, caller).
	name := func(caller string, si, ai int) string { return fmt.Sprintf("%s-%d-%d", caller, si, ai) }
	cat, err := catalog.Open(ctx, filepath.Join(data, "catalog.db"), nil)
	require.NoError(t, err)
	require.NoError(t, cat.EnsureDefaultPolicy(ctx))
	require.NoError(t, cat.AddToken(ctx, catalog.Token{ID: "t", SecretHash: []byte("h"), Expires: time.Now().Add(time.Hour), Uses: 1}))
	require.NoError(t, cat.ConsumeToken(ctx, "t", func([]byte) bool { return true }, func(tx *sql.Tx) error {
		return catalog.AddAgent(ctx, tx, catalog.Agent{ID: "ag-1", Name: "site", TokenID: "t", CertSerial: "s1", CertNotAfter: time.Now().Add(time.Hour), Enrolled: time.Now()})
	}))
	require.NoError(t, cat.AddTarget(ctx, "ag-1", api.Target{Name: "dr", Agent: "site", Dir: "/nonexistent/ferry-lc", Driver: "exec", Format: "raw", Exec: api.Driver{Start: "true"}}))
	for si, st := range lifecycle.States {
		for ai := range lifecycle.Actions {
			for _, caller := range []string{"api", "cli"} {
				m := catalog.Machine{Name: name(caller, si, ai), AgentID: "ag-1", Policy: catalog.DefaultPolicyName, Target: "dr",
					State: st, ActiveSite: "source", Direction: "forward",
					Spec: api.ProtectRequest{Machine: name(caller, si, ai), Agent: "site", Disks: []api.DiskRef{{Name: "d", Path: "/dev/null"}}}}
				switch st {
				case catalog.StateFailedOver, catalog.StateCommitted, catalog.StateReprotecting, catalog.StateReverseProtected,
					catalog.StateFailingBack:
					m.ActiveSite = "target"
					m.Failover = &api.FailoverInfo{Job: "job-old", Target: "dr", PointID: 1, Set: "live"}
				case catalog.StateTestFailedOver:
					m.Failover = &api.FailoverInfo{Job: "job-old", Target: "dr", PointID: 1, Set: "test-job-old", TestName: m.Name + "-test"}
				}
				if st == catalog.StateTestFailedBack || (st == catalog.StateReverseProtected && lifecycle.Actions[ai] == lifecycle.TestFailback) {
					// Re-protected with a test directory, a home driver that starts.
					m.ActiveSite, m.Direction = "target", "reverse"
					m.Failover = &api.FailoverInfo{Job: "job-old", Target: "dr", PointID: 1, Set: "live"}
					m.Spec.Driver.Start = "true"
					m.RoundTrip = &catalog.RoundTrip{Job: "job-old", Target: "dr", HomeDir: "/nonexistent/ferry-lc-home", TestDir: "/nonexistent/ferry-lc-test"}
				}
				require.NoError(t, cat.AddMachine(ctx, m))
			}
		}
	}
	require.NoError(t, cat.Close())

	sock := filepath.Join(dir, "admin.sock")
	ready := make(chan struct{})
	srv, err := controller.New(controller.Config{DataDir: data, Listen: "127.0.0.1:0", AdminSocket: sock,
		Logger: slog.New(slog.DiscardHandler), OnReady: func(string, string) { close(ready) }})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("the controller stopped: %v", err)
	}
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	cl, err := admin.NewClient(admin.ClientConfig{Address: sock})
	require.NoError(t, err)

	for si, st := range lifecycle.States {
		m, err := cl.Machine(ctx, name("api", si, 0))
		require.NoError(t, err)
		require.Equal(t, lifecycle.Allowed(st), m.AllowedActions, "machines show of a %s machine offers what the table allows", st)
		for ai, a := range lifecycle.Actions {
			rule := lifecycle.Lookup(st, a)

			// The admin API.
			mName := name("api", si, ai)
			err := apiCall(ctx, cl, a, mName)
			var ae *api.Error
			if rule.Allowed() {
				if errors.As(err, &ae) {
					require.NotEqual(t, api.CodeFailedPrecondition, ae.Code, "API: %s on a %s machine is allowed by the table, refused: %v", a, st, err)
				}
			} else {
				require.True(t, errors.As(err, &ae), "API: %s on a %s machine must be refused, got %v", a, st, err)
				require.Equal(t, api.CodeFailedPrecondition, ae.Code, "API: %s on %s: %v", a, st, err)
				require.Equal(t, lifecycle.Check(mName, st, a).Error(), ae.Message, "API: the table's reason")
				require.Contains(t, ae.Message, rule.Reason)
				if a == lifecycle.UnplannedFailback {
					// A failover with direction reverse is this very action.
					_, err := cl.Failover(ctx, api.FailoverRequest{Machine: mName, Direction: "reverse"})
					var re *api.Error
					require.True(t, errors.As(err, &re), "API: failover --direction reverse on a %s machine must be refused, got %v", st, err)
					require.Equal(t, *ae, *re, "API: failover --direction reverse is refused as failback --unplanned")
				}
			}

			// The CLI.
			mName = name("cli", si, ai)
			var out, errOut bytes.Buffer
			code := run(ctx, append([]string{"--admin", sock, "--json"}, cliArgs(a, mName, filepath.Join(dir, "out-"+mName))...), &out, &errOut)
			var cliErr api.Error
			if errOut.Len() > 0 {
				require.NoError(t, json.Unmarshal(errOut.Bytes(), &cliErr), "CLI stderr: %s", errOut.String())
			}
			if rule.Allowed() {
				require.NotEqual(t, api.CodeFailedPrecondition, cliErr.Code, "CLI: %s on a %s machine is allowed by the table, refused (exit %d): %s", a, st, code, errOut.String())
			} else {
				require.Equal(t, exitError, code, "CLI: %s on a %s machine: exit code (stderr %s)", a, st, errOut.String())
				require.Equal(t, api.CodeFailedPrecondition, cliErr.Code, "CLI: %s on %s: %s", a, st, errOut.String())
				require.Equal(t, lifecycle.Check(mName, st, a).Error(), cliErr.Message, "CLI: the table's reason")
			}
		}
	}

	// machines update follows its own table (lifecycle.CheckUpdate): a
	// change is accepted while the machine runs at home and replicates
	// forward, and refused otherwise with the reason.
	for si, st := range lifecycle.States {
		mName := name("api", si, 0)
		var out, errOut bytes.Buffer
		code := run(ctx, []string{"--admin", sock, "--json", "machines", "update", mName, "--pre-snapshot", "sync"}, &out, &errOut)
		if lifecycle.CheckUpdate(mName, st) == nil {
			require.Equal(t, exitOK, code, "machines update of a %s machine: %s", st, errOut.String())
			var res api.UpdateMachineResult
			require.NoError(t, json.Unmarshal(out.Bytes(), &res))
			require.Equal(t, "sync", res.Machine.PreSnapshot)
			continue
		}
		require.Equal(t, exitError, code, "machines update of a %s machine: %s", st, out.String())
		var cliErr api.Error
		require.NoError(t, json.Unmarshal(errOut.Bytes(), &cliErr), "CLI stderr: %s", errOut.String())
		require.Equal(t, api.CodeFailedPrecondition, cliErr.Code, "machines update on %s", st)
		require.Equal(t, lifecycle.CheckUpdate(mName, st).Error(), cliErr.Message)
		m, err := cl.Machine(ctx, mName)
		require.NoError(t, err)
		require.Empty(t, m.PreSnapshot, "a refused update changed the machine")
	}
}
