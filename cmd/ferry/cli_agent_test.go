package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/protocol/msg"
)

// startAgent enrols an in-process agent named name with a token made by
// the CLI and runs it until the test ends. It allows exec driver commands
// (tests drive exec targets); startAgentAllowing chooses.
func (s *served) startAgent(t *testing.T, name string) {
	t.Helper()
	s.startAgentAllowing(t, name, msg.Permissions{ExecDrivers: true})
}

// startAgentAllowing is startAgent with what the agent allows given to
// its run (as `ferry-agent run --allow-…` would).
func (s *served) startAgentAllowing(t *testing.T, name string, allow msg.Permissions) {
	t.Helper()
	code, stdout, stderr := s.cli(t, "--json", "tokens", "create")
	require.Equal(t, exitOK, code, stderr)
	var tok api.Token
	require.NoError(t, json.Unmarshal([]byte(stdout), &tok))
	ctx, cancel := context.WithCancel(context.Background())
	stateDir := filepath.Join(t.TempDir(), "agent")
	_, err := agent.Enroll(ctx, agent.EnrollConfig{Controller: s.agent, Token: tok.Token, Name: name, StateDir: stateDir})
	require.NoError(t, err)
	a, err := agent.New(agent.Config{StateDir: stateDir, Streams: 2, MaxBackoff: time.Second,
		AllowPlanScripts: allow.PlanScripts, AllowExecDrivers: allow.ExecDrivers})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Error("the agent did not stop within 30 s")
		}
	})
}

// TestCLIProtectAndExport: with a real agent enrolled in process, protect
// replicates an image; points list shows the point; points export writes a
// disk equal to the bytes the test wrote; label names the point; refusals
// (unknown agent, unknown point) exit 1 with their codes.
func TestCLIProtectAndExport(t *testing.T) {
	s := serve(t)
	s.startAgent(t, "a1")
	require.Eventually(t, func() bool {
		code, stdout, _ := s.cli(t, "--json", "agents", "list")
		var as []api.Agent
		return code == exitOK && json.Unmarshal([]byte(stdout), &as) == nil && len(as) == 1 && as[0].Connected && as[0].Name == "a1"
	}, 30*time.Second, 50*time.Millisecond, "the agent never showed as connected")

	img := filepath.Join(t.TempDir(), "vm.img")
	want := make([]byte, 6<<20+4096) // not a multiple of the block size
	rng := rand.New(rand.NewPCG(7, 7))
	for i := 0; i < len(want); i += 8 << 10 {
		if i/(8<<10)%3 != 0 { // some blocks stay zero
			for j := i; j < min(i+4096, len(want)); j++ {
				want[j] = byte(rng.Uint32())
			}
		}
	}
	require.NoError(t, os.WriteFile(img, want, 0o600))

	code, _, stderr := s.cli(t, "--json", "protect", "vm", "--agent", "ghost", "--disk", "d="+img)
	require.Equal(t, exitError, code)
	require.Equal(t, api.CodeNotFound, jsonError(t, stderr).Code)

	code, _, stderr = s.cli(t, "policies", "create", "p", "--rp-every", "1h", "--block-size", "64KiB")
	require.Equal(t, exitOK, code, stderr)
	code, _, stderr = s.cli(t, "protect", "vm", "--agent", "a1", "--disk", "d="+img, "--policy", "p")
	require.Equal(t, exitOK, code, stderr)
	var pts []api.Point
	require.Eventually(t, func() bool {
		code, stdout, _ := s.cli(t, "--json", "points", "list", "vm")
		return code == exitOK && json.Unmarshal([]byte(stdout), &pts) == nil && len(pts) > 0
	}, time.Minute, 100*time.Millisecond, "no point of vm")

	out := filepath.Join(t.TempDir(), "export")
	code, stdout, stderr := s.cli(t, "points", "export", "vm", "--point", "latest", "--out", out)
	require.Equal(t, exitOK, code, stderr)
	require.Contains(t, stdout, "exported point")
	got, err := os.ReadFile(filepath.Join(out, "d.raw"))
	require.NoError(t, err)
	require.Equal(t, len(want), len(got))
	require.True(t, bytes.Equal(want, got), "the exported disk differs from the bytes the test wrote")
	_, err = os.Stat(filepath.Join(out, "d.raw.partial"))
	require.ErrorIs(t, err, os.ErrNotExist, "export left its temporary file")

	code, _, stderr = s.cli(t, "--json", "points", "export", "vm", "--point", "999999", "--out", t.TempDir())
	require.Equal(t, exitError, code)
	require.Equal(t, api.CodeNotFound, jsonError(t, stderr).Code)

	code, _, stderr = s.cli(t, "points", "label", "vm", "--point", "latest", "first")
	require.Equal(t, exitOK, code, stderr)
	code, stdout, stderr = s.cli(t, "--json", "points", "list", "vm")
	require.Equal(t, exitOK, code, stderr)
	require.NoError(t, json.Unmarshal([]byte(stdout), &pts))
	require.Equal(t, "first", pts[len(pts)-1].Name)

	var m struct {
		State string `json:"state"`
		Agent string `json:"agent"`
	}
	code, stdout, stderr = s.cli(t, "--json", "machines", "show", "vm")
	require.Equal(t, exitOK, code, stderr)
	require.NoError(t, json.Unmarshal([]byte(stdout), &m))
	require.Equal(t, "protected", m.State)

	// An agent that protects a machine cannot be removed.
	code, _, stderr = s.cli(t, "--json", "agents", "remove", "a1")
	require.Equal(t, exitError, code)
	require.Equal(t, api.CodeConflict, jsonError(t, stderr).Code)
}
