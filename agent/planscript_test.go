//go:build !windows

package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// scriptAgent is a target-side agent named a1 allowing what perms says,
// served over a real session; it returns the controller side.
func scriptAgent(t *testing.T, perms msg.Permissions) *Agent {
	a := newTargetAgent(t)
	a.perms = perms
	a.state = &State{Identity: Identity{Name: "a1"}}
	return a
}

// TestPlanScript: a plan script runs through the shell with the FERRY_*
// environment added, returns its output and exit 0; a failing script is
// failed_precondition naming its exit status and output; a timeout kills
// the script's whole process group; the output kept is the tail, bounded.
func TestPlanScript(t *testing.T) {
	a := scriptAgent(t, msg.Permissions{PlanScripts: true})
	ctrl := targetAgent(t, a)
	env := map[string]string{"FERRY_PLAN": "shop", "FERRY_GROUP": "2", "FERRY_PHASE": "pre"}

	resp, err := call[msg.PlanScriptResponse](t, ctrl, msg.MethodPlanScript, msg.PlanScriptRequest{
		Command: `echo "$FERRY_PLAN/$FERRY_GROUP/$FERRY_PHASE"; echo to-stderr >&2; test -n "$PATH"`, Env: env, Timeout: 10 * time.Second})
	require.NoError(t, err)
	require.Equal(t, 0, resp.ExitCode)
	require.Equal(t, "shop/2/pre\nto-stderr\n", resp.Output)

	_, err = call[msg.PlanScriptResponse](t, ctrl, msg.MethodPlanScript, msg.PlanScriptRequest{
		Command: "echo the database is not up; exit 3", Timeout: 10 * time.Second})
	requireCode(t, err, protocol.CodeFailedPrecondition)
	require.Contains(t, err.Error(), "exit status 3")
	require.Contains(t, err.Error(), "the database is not up")

	// The script leaves a child behind and waits on it: the timeout must
	// end both (the process group), and promptly.
	pidFile := filepath.Join(t.TempDir(), "child")
	start := time.Now()
	_, err = call[msg.PlanScriptResponse](t, ctrl, msg.MethodPlanScript, msg.PlanScriptRequest{
		Command: "sleep 60 & echo $! > " + pidFile + "; wait", Timeout: 500 * time.Millisecond})
	requireCode(t, err, protocol.CodeFailedPrecondition)
	require.Contains(t, err.Error(), "timed out after 500ms")
	require.Less(t, time.Since(start), 10*time.Second)
	b, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return syscall.Kill(pid, 0) != nil }, 5*time.Second, 20*time.Millisecond,
		"the script's child %d outlived the timeout", pid)

	resp, err = call[msg.PlanScriptResponse](t, ctrl, msg.MethodPlanScript, msg.PlanScriptRequest{
		Command: "head -c 300000 /dev/zero | tr '\\0' x; echo; echo END", Timeout: 10 * time.Second})
	require.NoError(t, err)
	require.Len(t, resp.Output, driver.MaxScriptOutput)
	require.True(t, strings.HasSuffix(resp.Output, "x\nEND\n"), "the output's tail is kept")

	_, err = call[msg.PlanScriptResponse](t, ctrl, msg.MethodPlanScript, msg.PlanScriptRequest{Command: "  "})
	requireCode(t, err, protocol.CodeInvalid)
}

// TestAgentRefusesWhatItDoesNotAllow: without --allow-plan-scripts the
// agent refuses a plan script, and without --allow-exec-drivers an exec
// target driver command, each with the error naming the flag — and runs
// nothing. A hypervisor driver or an action with no command is not an
// exec command and is not refused for it.
func TestAgentRefusesWhatItDoesNotAllow(t *testing.T) {
	a := scriptAgent(t, msg.Permissions{})
	ctrl := targetAgent(t, a)
	marker := filepath.Join(t.TempDir(), "ran")

	_, err := call[msg.PlanScriptResponse](t, ctrl, msg.MethodPlanScript, msg.PlanScriptRequest{Command: "touch " + marker, Timeout: 10 * time.Second})
	requireCode(t, err, protocol.CodeFailedPrecondition)
	require.Contains(t, err.Error(), "plan scripts are not allowed on agent a1: install or run it with --allow-plan-scripts")

	cmds := msg.Driver{Start: "touch " + marker, Stop: "touch " + marker}
	_, err = call[msg.DriverResponse](t, ctrl, msg.MethodTargetDriver, msg.TargetDriverRequest{Machine: "m", Action: "start", Commands: cmds})
	requireCode(t, err, protocol.CodeFailedPrecondition)
	require.Contains(t, err.Error(), "exec driver commands are not allowed on agent a1: install or run it with --allow-exec-drivers")
	_, err = os.Stat(marker)
	require.ErrorIs(t, err, os.ErrNotExist, "a refused command ran")

	// status has no command here: nothing would run, so it is not refused
	// for the permission but fails as not configured.
	_, err = call[msg.DriverResponse](t, ctrl, msg.MethodTargetDriver, msg.TargetDriverRequest{Machine: "m", Action: "status", Commands: cmds})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "not allowed")

	// The same agent allowing both runs them.
	b := scriptAgent(t, msg.Permissions{PlanScripts: true, ExecDrivers: true})
	ctrlB := targetAgent(t, b)
	_, err = call[msg.DriverResponse](t, ctrlB, msg.MethodTargetDriver, msg.TargetDriverRequest{Machine: "m", Action: "stop", Commands: cmds})
	require.NoError(t, err)
	_, err = os.Stat(marker)
	require.NoError(t, err, "the allowed driver command did not run")
	_, err = call[msg.PlanScriptResponse](t, ctrlB, msg.MethodPlanScript, msg.PlanScriptRequest{Command: "rm " + marker, Timeout: 10 * time.Second})
	require.NoError(t, err)
	_, err = os.Stat(marker)
	require.ErrorIs(t, err, os.ErrNotExist, "the allowed plan script did not run")
}

// TestPermissionsRecorded: enroll's choice is kept in the state directory
// and read back; a directory without the file allows nothing.
func TestPermissionsRecorded(t *testing.T) {
	dir := t.TempDir()
	p, err := LoadPermissions(dir)
	require.NoError(t, err)
	require.Equal(t, msg.Permissions{}, p)
	require.NoError(t, SavePermissions(dir, msg.Permissions{ExecDrivers: true}))
	p, err = LoadPermissions(dir)
	require.NoError(t, err)
	require.Equal(t, msg.Permissions{ExecDrivers: true}, p)
	require.NoError(t, os.WriteFile(filepath.Join(dir, permissionsFile), []byte("{"), 0o600))
	_, err = LoadPermissions(dir)
	require.Error(t, err, "a damaged record is an error, not silently nothing")
}
