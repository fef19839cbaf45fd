package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/agent/snapshot"
)

// TestMaxFreezeRefusals: `run --max-freeze` outside (0, 60s] exits 2
// naming the flag and the bounds, before anything starts; a config file's
// max_freeze out of range is refused naming the key.
func TestMaxFreezeRefusals(t *testing.T) {
	dir := t.TempDir()
	for _, v := range []string{"0s", "-1s", "61s", "1h"} {
		var stderr bytes.Buffer
		code := run(context.Background(), []string{"run", "--state-dir", dir, "--max-freeze", v}, io.Discard, &stderr)
		require.Equal(t, 2, code, "--max-freeze %s: %s", v, stderr.String())
		require.Contains(t, stderr.String(), "--max-freeze")
		require.Contains(t, stderr.String(), "at most 1m0s")
	}
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"run", "--state-dir", dir, "--max-freeze", "soon"}, io.Discard, &stderr)
	require.Equal(t, 2, code, stderr.String())

	for _, v := range []string{"0s", "90s", "soon"} {
		cfg := filepath.Join(t.TempDir(), "agent.yaml")
		require.NoError(t, os.WriteFile(cfg, []byte("state_dir: "+dir+"\nmax_freeze: "+v+"\n"), 0o600))
		stderr.Reset()
		code := run(context.Background(), []string{"run", "--config", cfg}, io.Discard, &stderr)
		require.NotEqual(t, 0, code)
		require.Contains(t, stderr.String(), "max_freeze", "max_freeze: %s", v)
	}
}

// TestMaxFreezeFromFlagAndConfig: the default is 2s; the config file's
// max_freeze applies unless the flag is given, which wins.
func TestMaxFreezeFromFlagAndConfig(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("state_dir: /x\nmax_freeze: 500ms\n"), 0o600))
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{nil, snapshot.DefaultMaxFreeze},
		{[]string{"--max-freeze", "5s"}, 5 * time.Second},
		{[]string{"--config", cfg}, 500 * time.Millisecond},
		{[]string{"--config", cfg, "--max-freeze", "60s"}, time.Minute},
	} {
		o := runOptions{cfg: agent.DefaultConfig()}
		cmd := runCommand(&globals{stdout: io.Discard, stderr: io.Discard}, &o)
		require.NoError(t, cmd.ParseFlags(tc.args))
		require.NoError(t, applyConfigFile(cmd, &o))
		require.Equal(t, tc.want, o.cfg.MaxFreeze, "%v", tc.args)
	}
}
