package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// agentAllows is what agents list --json says an agent allows ("-" when
// it says nothing).
func agentAllows(t *testing.T, c *Controller, name string) string {
	t.Helper()
	var agents []struct {
		Name      string `json:"name"`
		Connected bool   `json:"connected"`
		Allows    *struct {
			PlanScripts bool `json:"plan_scripts"`
			ExecDrivers bool `json:"exec_drivers"`
		} `json:"allows"`
	}
	c.JSON(&agents, "agents", "list")
	for _, a := range agents {
		if a.Name == name && a.Connected && a.Allows != nil {
			var out []string
			if a.Allows.PlanScripts {
				out = append(out, "plan-scripts")
			}
			if a.Allows.ExecDrivers {
				out = append(out, "exec-drivers")
			}
			return strings.Join(out, ",")
		}
	}
	return "-"
}

// TestAgentPermissions, with real binaries: what each agent allows comes
// from its command line or enrol's record and shows in agents list; a
// target with exec commands on an agent that did not opt in is refused
// naming the flag; and an agent restarted without --allow-exec-drivers
// refuses its machine's source driver in a planned failover — the command
// never runs — and the job fails with the agent's named error.
func TestAgentPermissions(t *testing.T) {
	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "locked", WithoutExecDrivers)
	open := EnrollAgent(t, c, c.Addr, "open")

	// enroll --allow-plan-scripts is recorded; run without flags keeps it.
	rec := &Agent{t: t, Bin: c.Bin, Name: "recorded", StateDir: filepath.Join(t.TempDir(), "agent-recorded"), args: []string{WithoutExecDrivers}}
	out, err := exec.Command(filepath.Join(c.Bin, "ferry-agent"), "enroll", "--controller", c.Addr, "--token", c.Token(),
		"--name", rec.Name, "--state-dir", rec.StateDir, "--allow-plan-scripts").CombinedOutput()
	require.NoError(t, err, "enroll: %s", out)
	rec.Start()

	want := map[string]string{"locked": "", "open": "exec-drivers", "recorded": "plan-scripts"}
	require.Eventually(t, func() bool {
		for name, w := range want {
			if agentAllows(t, c, name) != w {
				return false
			}
		}
		return true
	}, 30*time.Second, 100*time.Millisecond, "agents list never showed what each agent allows")

	dir := t.TempDir()
	r := c.Ferry("targets", "add", "dr-locked", "--agent", "locked", "--dir", dir, "--start", "true")
	require.Equal(t, 1, r.Code, r.Stdout)
	require.Contains(t, r.Stderr, "exec driver commands are not allowed on agent locked: install or run it with --allow-exec-drivers")

	// A machine whose source driver runs on "open", set up while it allowed it.
	ctl := t.TempDir()
	marker := filepath.Join(ctl, "stop-ran")
	c.MustFerry("targets", "add", "dr", "--agent", "open", "--dir", filepath.Join(dir, "dr"), "--start", "true", "--stop", "true", "--status", "echo stopped")
	img := filepath.Join(ctl, "m.img")
	makeImage(t, img, 5, 4<<20)
	c.MustFerry("policies", "create", "p", "--rp-every", "1h")
	c.MustFerry("protect", "m", "--agent", "open", "--disk", "d="+img, "--policy", "p", "--target", "dr",
		"--stop", "touch "+marker, "--start", "true", "--status", "echo running")
	c.WaitPoint("m", 0, 3*time.Minute)

	// Its owner restarts it without --allow-exec-drivers.
	open.Proc.Stop()
	open.args = []string{WithoutExecDrivers}
	open.Start()
	require.Eventually(t, func() bool { return agentAllows(t, c, "open") == "" }, 30*time.Second, 100*time.Millisecond)

	j := c.runJob(t, 3, "failover", "m", "--planned")
	all := j.Error
	for _, m := range j.Machines {
		all += "\n" + m.Error
	}
	require.Contains(t, all, "exec driver commands are not allowed on agent open: install or run it with --allow-exec-drivers")
	_, err = os.Stat(marker)
	require.ErrorIs(t, err, os.ErrNotExist, "the refused stop command ran")
}
