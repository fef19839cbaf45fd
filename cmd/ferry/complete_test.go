package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// runAsCLIEnv makes the test binary behave as the ferry command, so that a
// shell can run it (TestShellCompletesNames puts it on PATH as "ferry").
const runAsCLIEnv = "FERRY_TEST_RUN_AS_CLI"

func TestMain(m *testing.M) {
	if os.Getenv(runAsCLIEnv) == "1" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// bashComplete sources `ferry completion bash` in a real bash and runs the
// script's own completion functions on the words of a command line whose
// last word is being typed; it returns what bash would offer (COMPREPLY).
func bashComplete(t *testing.T, binDir, admin string, words ...string) []string {
	t.Helper()
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = "'" + w + "'"
	}
	script := `source <(ferry completion bash) || exit 9
declare -F __ferry_get_completion_results >/dev/null || exit 8
words=(` + strings.Join(quoted, " ") + `)
cword=$(( ${#words[@]} - 1 ))
cur=${words[cword]}
prev=${words[cword-1]}
__ferry_get_completion_results
__ferry_process_completion_results 2>/dev/null
printf '%s\n' "${COMPREPLY[@]}"
`
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"), runAsCLIEnv+"=1")
	if admin != "" {
		cmd.Env = append(cmd.Env, "FERRY_ADMIN="+admin)
	}
	out, err := cmd.Output()
	require.NoError(t, err, "bash completion script failed: %s", out)
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			got = append(got, l)
		}
	}
	return got
}

// TestShellCompletesNames: against a real controller with a protected
// machine, bash completion (the script `ferry completion bash` prints)
// completes the machine's name (controller found through FERRY_ADMIN or
// --admin), the agent's name for --agent, a point spec for --point and a
// token id.
func TestShellCompletesNames(t *testing.T) {
	_, err := exec.LookPath("bash")
	require.NoError(t, err, "bash is needed to test bash completion")
	self, err := os.Executable()
	require.NoError(t, err)
	binDir := t.TempDir()
	require.NoError(t, os.Symlink(self, filepath.Join(binDir, "ferry")))

	s := serve(t)
	s.startAgent(t, "host1")
	require.Eventually(t, func() bool {
		code, stdout, _ := s.cli(t, "--json", "agents", "list")
		var as []api.Agent
		return code == exitOK && json.Unmarshal([]byte(stdout), &as) == nil && len(as) == 1 && as[0].Connected
	}, 30*time.Second, 50*time.Millisecond, "the agent never showed as connected")
	img := filepath.Join(t.TempDir(), "web.img")
	require.NoError(t, os.WriteFile(img, []byte(strings.Repeat("ferry", 1<<16)), 0o600))
	code, _, stderr := s.cli(t, "protect", "webserver1", "--agent", "host1", "--disk", "d="+img)
	require.Equal(t, exitOK, code, stderr)

	require.Equal(t, []string{"webserver1"}, bashComplete(t, binDir, s.admin, "ferry", "machines", "show", "web"))
	require.Equal(t, []string{"webserver1"}, bashComplete(t, binDir, s.admin, "ferry", "failover", ""))
	require.Equal(t, []string{"host1"}, bashComplete(t, binDir, s.admin, "ferry", "inventory", "h"))
	require.Equal(t, []string{"host1"}, bashComplete(t, binDir, s.admin, "ferry", "protect", "vm2", "--agent", ""))
	require.Equal(t, []string{"latest-app-consistent"}, bashComplete(t, binDir, s.admin, "ferry", "points", "export", "webserver1", "--point", "latest-a"))
	code, stdout, stderr := s.cli(t, "--json", "tokens", "list")
	require.Equal(t, exitOK, code, stderr)
	var toks []api.Token
	require.NoError(t, json.Unmarshal([]byte(stdout), &toks))
	require.Len(t, toks, 1, "startAgent made one token")
	require.Equal(t, []string{toks[0].ID}, bashComplete(t, binDir, s.admin, "ferry", "tokens", "revoke", ""))
	code, _, stderr = s.cli(t, "alerts", "add", "oncall", "--webhook", "https://hooks.example.com/x", "--on", "rpo-breach")
	require.Equal(t, exitOK, code, stderr)
	require.Equal(t, []string{"oncall"}, bashComplete(t, binDir, s.admin, "ferry", "alerts", "test", "o"))
	require.ElementsMatch(t, []string{"disk-low", "drill-failed"}, bashComplete(t, binDir, s.admin, "ferry", "alerts", "add", "x", "--on", "d"))
	// --admin on the command line finds the controller as FERRY_ADMIN does.
	require.Equal(t, []string{"webserver1"}, bashComplete(t, binDir, "", "ferry", "--admin", s.admin, "unprotect", "w"))
	// An unreachable controller completes nothing, and promptly (bounded by
	// bashComplete's 30 s).
	require.Empty(t, bashComplete(t, binDir, filepath.Join(t.TempDir(), "no.sock"), "ferry", "machines", "show", "w"))
	// A name the controller does not have completes to nothing.
	require.Empty(t, bashComplete(t, binDir, s.admin, "ferry", "machines", "show", "db"))
}
