package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent"
)

// TestFreezeOwnFSFromFlagAndConfig: --freeze-own-fs is repeatable and
// comma-separated; the config file's freeze_own_fs applies unless the
// flag is given, which wins; a relative path is refused naming the flag
// (or the key).
func TestFreezeOwnFSFromFlagAndConfig(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("state_dir: /x\nfreeze_own_fs: [/srv/data, /]\n"), 0o600))
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, nil},
		{[]string{"--freeze-own-fs", "/a,/b", "--freeze-own-fs", "/c"}, []string{"/a", "/b", "/c"}},
		{[]string{"--config", cfg}, []string{"/srv/data", "/"}},
		{[]string{"--config", cfg, "--freeze-own-fs", "/a"}, []string{"/a"}},
	} {
		o := runOptions{cfg: agent.DefaultConfig()}
		cmd := runCommand(&globals{stdout: io.Discard, stderr: io.Discard}, &o)
		require.NoError(t, cmd.ParseFlags(tc.args))
		require.NoError(t, applyConfigFile(cmd, &o))
		require.Equal(t, tc.want, o.cfg.FreezeOwnFS, "%v", tc.args)
	}

	var stderr bytes.Buffer
	code := run(context.Background(), []string{"run", "--state-dir", t.TempDir(), "--freeze-own-fs", "data"}, io.Discard, &stderr)
	require.NotEqual(t, 0, code)
	require.Contains(t, stderr.String(), `--freeze-own-fs "data": want the absolute path of a mount point`)

	bad := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("state_dir: /x\nfreeze_own_fs: [data]\n"), 0o600))
	stderr.Reset()
	code = run(context.Background(), []string{"run", "--config", bad}, io.Discard, &stderr)
	require.NotEqual(t, 0, code)
	require.Contains(t, stderr.String(), `freeze_own_fs "data"`)
}
