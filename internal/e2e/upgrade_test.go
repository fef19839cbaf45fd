package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// supervisedAgent is `ferry-agent run --supervise` from a binary of its own
// (upgrades replace it): the service's process tree without the service.
type supervisedAgent struct {
	bin   string
	state string
	proc  *Proc
}

func startSupervisedAgent(t *testing.T, c *Controller, name, bin string, extra ...string) *supervisedAgent {
	t.Helper()
	dir := t.TempDir()
	a := &supervisedAgent{bin: filepath.Join(dir, "ferry-agent"), state: filepath.Join(dir, "state")}
	b, err := os.ReadFile(bin)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(a.bin, b, 0o755))
	out, code := runCmd(t, a.bin, "enroll", "--controller", c.Addr, "--token", c.Token(), "--name", name, "--state-dir", a.state)
	require.Equal(t, 0, code, out)
	a.proc = start(t, "supervised "+name, a.bin, append([]string{"run", "--supervise", "--state-dir", a.state, "--log-level", "debug"}, extra...)...)
	return a
}

func (a *supervisedAgent) version(t *testing.T) string {
	out, code := runCmd(t, a.bin, "version")
	require.Equal(t, 0, code, out)
	return strings.TrimSpace(out)
}

func (a *supervisedAgent) record(t *testing.T) map[string]any {
	b, err := os.ReadFile(filepath.Join(a.state, "upgrade.json"))
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	return m
}

// TestAgentsUpgrade: ferry agents upgrade pushes the dist version to a
// connected agent, which restarts into it and reports it; asked again, the
// agent is current.
func TestAgentsUpgrade(t *testing.T) {
	v1, v2 := agentBuild(t, "e2e-v1"), agentBuild(t, "e2e-v2")
	c := StartController(t, "--dist", makeDist(t, "e2e-v2", v2))
	a := startSupervisedAgent(t, c, "up", v1)
	before := c.waitAgentVersion("up", "e2e-v1", 30*time.Second)

	start := time.Now()
	res, code := c.upgrade("up")
	t.Logf("ferry agents upgrade: %s", time.Since(start).Round(time.Millisecond))
	require.Equal(t, 0, code)
	require.Equal(t, []upgradeResult{{Agent: "up", FromVersion: "e2e-v1", ToVersion: "e2e-v2", State: "upgraded"}}, res)
	after := c.waitAgentVersion("up", "e2e-v2", 10*time.Second)
	require.Equal(t, before.ID, after.ID)
	require.Equal(t, "e2e-v2", a.version(t), "the binary on disk is the new one")
	require.Equal(t, "committed", a.record(t)["state"])
	require.Eventually(t, func() bool { _, err := os.Stat(a.bin + ".prev"); return os.IsNotExist(err) }, 10*time.Second, 20*time.Millisecond)
	require.NoFileExists(t, a.bin+".new")

	res, code = c.upgrade("--all")
	require.Equal(t, 0, code)
	require.Equal(t, []upgradeResult{{Agent: "up", FromVersion: "e2e-v2", ToVersion: "e2e-v2", State: "current"}}, res)
}

// TestAgentsUpgradeRollsBack: a pushed build that cannot run as the agent
// (it answers `version` but exits at once when run) is rolled back by the
// supervisor; the agent is back on its previous version and the result says
// rolled-back, with the reason.
func TestAgentsUpgradeRollsBack(t *testing.T) {
	v1 := agentBuild(t, "e2e-v1")
	broken := filepath.Join(t.TempDir(), "broken")
	require.NoError(t, os.WriteFile(broken, []byte("#!/bin/sh\n[ \"$1\" = version ] && { echo e2e-rb-broken; exit 0; }\necho 'this build cannot start' >&2\nexit 1\n"), 0o755))
	c := StartController(t, "--dist", makeDist(t, "e2e-rb-broken", broken))
	a := startSupervisedAgent(t, c, "rb", v1)
	c.waitAgentVersion("rb", "e2e-v1", 30*time.Second)

	res, code := c.upgrade("rb")
	require.Equal(t, 1, code, "a rolled-back upgrade is a failure of the command")
	require.Len(t, res, 1)
	require.Equal(t, "rolled-back", res[0].State, "%+v", res[0])
	require.Equal(t, "e2e-v1", res[0].FromVersion)
	require.Contains(t, res[0].Error, "exited before the controller confirmed it")
	c.waitAgentVersion("rb", "e2e-v1", 10*time.Second)
	require.Equal(t, "e2e-v1", a.version(t), "the previous binary is back in place")
	require.NoFileExists(t, a.bin+".prev")
	require.Equal(t, "rolled-back", a.record(t)["state"])
	require.Contains(t, a.proc.Output(), "this build cannot start", "the broken build did run")
}

// TestAgentsUpgradeRefusals: a checksum mismatch changes nothing at the
// agent; an agent that no supervisor runs cannot upgrade; a controller
// without --dist says so.
func TestAgentsUpgradeRefusals(t *testing.T) {
	v1, v2 := agentBuild(t, "e2e-v1"), agentBuild(t, "e2e-v2")
	dist := makeDist(t, "e2e-v2", v2)
	corrupt(t, filepath.Join(dist, hostDistFile()))
	c := StartController(t, "--dist", dist)
	a := startSupervisedAgent(t, c, "sum", v1)
	c.waitAgentVersion("sum", "e2e-v1", 30*time.Second)

	res, code := c.upgrade("sum")
	require.Equal(t, 1, code)
	require.Equal(t, "failed", res[0].State)
	require.Contains(t, res[0].Error, "checksum mismatch for "+hostDistFile())
	require.Equal(t, "e2e-v1", a.version(t))
	require.NoFileExists(t, a.bin+".new")
	require.Nil(t, a.record(t), "a refused download is not an upgrade")
	r, _ := c.agent("sum")
	require.True(t, r.Connected, "the agent kept running")

	EnrollAgent(t, c, c.Addr, "plain") // `ferry-agent run` without a supervisor
	res, code = c.upgrade("plain")
	require.Equal(t, 1, code)
	require.Equal(t, "failed", res[0].State)
	require.Contains(t, res[0].Error, "does not run under the ferry-agent service's supervisor")

	c2 := StartController(t)
	r2 := c2.Ferry("agents", "upgrade", "--all")
	require.Equal(t, 1, r2.Code)
	require.Contains(t, r2.Stderr, "--dist")
}

// TestSupervisedAgentStopsWithItsSupervisor: killing the supervisor outright
// (no chance to stop its child) still ends the agent: its stdin closes.
func TestSupervisedAgentStopsWithItsSupervisor(t *testing.T) {
	v1 := agentBuild(t, "e2e-v1")
	c := StartController(t)
	a := startSupervisedAgent(t, c, "orphan", v1)
	c.waitAgentVersion("orphan", "e2e-v1", 30*time.Second)
	sup := a.proc.cmd.Process.Pid
	child := childOf(t, sup)
	require.NoError(t, syscallKill(sup))
	require.Eventually(t, func() bool { return !pidAlive(child) }, 10*time.Second, 20*time.Millisecond,
		"the agent outlived its killed supervisor")
}
