//go:build !windows

package installer

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/protocol/msg"
)

// The supervisor's children here are small sh scripts: real processes that
// note each start in an events file, then behave as the case needs (wait for
// stdin to close as an agent does, exit, ask for a restart, commit).

type supFixture struct {
	t      *testing.T
	dir    string
	bin    string
	state  string
	events string
	cfg    SupervisorConfig
	cancel context.CancelFunc
	done   chan error
}

func newSupFixture(t *testing.T) *supFixture {
	t.Helper()
	dir := t.TempDir()
	f := &supFixture{t: t, dir: dir, bin: filepath.Join(dir, "agent"), state: filepath.Join(dir, "state"),
		events: filepath.Join(dir, "events")}
	require.NoError(t, os.Mkdir(f.state, 0o700))
	f.cfg = DefaultSupervisorConfig()
	f.cfg.Binary, f.cfg.StateDir, f.cfg.Args = f.bin, f.state, []string{"run"}
	f.cfg.MinBackoff, f.cfg.MaxBackoff, f.cfg.Poll = 10*time.Millisecond, 20*time.Millisecond, 20*time.Millisecond
	f.cfg.StopTimeout = 5 * time.Second
	f.cfg.Logger = slog.New(slog.NewTextHandler(tWriter{t}, nil))
	return f
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// script writes an sh script that first notes "<tag> <pid>" in events.
func (f *supFixture) script(path, tag, body string) {
	f.t.Helper()
	s := fmt.Sprintf("#!/bin/sh\necho \"%s $$\" >> %s\n%s\n", tag, shQuote(f.events), body)
	require.NoError(f.t, os.WriteFile(path, []byte(s), 0o755))
}

// agentBody waits like an agent: until its stdin closes.
const agentBody = "exec cat >/dev/null"

func (f *supFixture) start() {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan error, 1)
	go func() { f.done <- Supervise(ctx, f.cfg) }()
	f.t.Cleanup(func() { f.stop() })
}

func (f *supFixture) stop() error {
	if f.cancel == nil {
		return nil
	}
	f.cancel()
	f.cancel = nil
	select {
	case err := <-f.done:
		return err
	case <-time.After(15 * time.Second):
		f.t.Fatal("Supervise did not return after its context ended")
		return nil
	}
}

// runs lists the events: "<tag> <pid>" per start.
func (f *supFixture) runs() []string {
	b, _ := os.ReadFile(f.events)
	return strings.Fields(strings.ReplaceAll(string(b), "\n", " "))
}

func (f *supFixture) tags() []string {
	var out []string
	for i, w := range f.runs() {
		if i%2 == 0 {
			out = append(out, w)
		}
	}
	return out
}

func (f *supFixture) waitTags(want ...string) {
	f.t.Helper()
	require.Eventually(f.t, func() bool { return strings.Join(f.tags(), ",") == strings.Join(want, ",") },
		10*time.Second, 10*time.Millisecond, "want runs %v", want)
}

func (f *supFixture) stage(to string) *msg.UpgradeRecord {
	rec := &msg.UpgradeRecord{State: msg.UpgradeStaged, From: "v1", To: to, Binary: f.bin,
		Staged: f.bin + ".new", Previous: f.bin + ".prev", StagedAt: time.Now().Unix()}
	require.NoError(f.t, agent.WriteUpgradeRecord(f.state, rec))
	return rec
}

func (f *supFixture) record() *msg.UpgradeRecord {
	rec, err := agent.ReadUpgradeRecord(f.state)
	require.NoError(f.t, err)
	return rec
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestSuperviseRestartsAndStops(t *testing.T) {
	f := newSupFixture(t)
	// First run: crash; second: ask for a restart; third: run as an agent.
	f.script(f.bin, "v1", `n=$(grep -c v1 `+shQuote(f.events)+`)
[ "$n" = 1 ] && exit 3
[ "$n" = 2 ] && exit `+strconv.Itoa(ExitRestart)+`
`+agentBody)
	f.start()
	f.waitTags("v1", "v1", "v1")
	pid, err := strconv.Atoi(f.runs()[5])
	require.NoError(t, err)
	require.True(t, alive(pid))
	require.NoError(t, f.stop())
	// The child was stopped and reaped before Supervise returned.
	require.False(t, alive(pid), "the agent outlived its supervisor")
}

func TestSuperviseRestartIsImmediate(t *testing.T) {
	f := newSupFixture(t)
	f.cfg.MinBackoff, f.cfg.MaxBackoff = time.Hour, time.Hour // a backoff would stall this test
	f.script(f.bin, "v1", `[ "$(grep -c v1 `+shQuote(f.events)+`)" = 1 ] && exit `+strconv.Itoa(ExitRestart)+"\n"+agentBody)
	f.start()
	f.waitTags("v1", "v1")
}

func TestSuperviseUpgradeCommitted(t *testing.T) {
	f := newSupFixture(t)
	f.script(f.bin, "v1", agentBody)
	// The new binary confirms itself as the controller's commit would.
	f.script(f.bin+".new", "v2", `sed -i 's/"state": "trial"/"state": "committed"/' `+shQuote(filepath.Join(f.state, agent.UpgradeRecordFile))+"\n"+agentBody)
	f.stage("v2")
	f.start()
	f.waitTags("v2")
	require.Eventually(t, func() bool { _, err := os.Stat(f.bin + ".prev"); return os.IsNotExist(err) },
		10*time.Second, 10*time.Millisecond, "the previous binary stays after the commit")
	rec := f.record()
	require.Equal(t, msg.UpgradeCommitted, rec.State)
	b, err := os.ReadFile(f.bin)
	require.NoError(t, err)
	require.Contains(t, string(b), `echo "v2`)
	require.NoFileExists(t, f.bin+".new")
}

func TestSuperviseUpgradeRollsBackWhenTheNewBinaryExits(t *testing.T) {
	f := newSupFixture(t)
	f.script(f.bin, "v1", agentBody)
	f.script(f.bin+".new", "v2", "exit 1")
	f.stage("v2")
	f.start()
	f.waitTags("v2", "v1")
	rec := f.record()
	require.Equal(t, msg.UpgradeRolledBack, rec.State)
	require.Contains(t, rec.Error, "exited before the controller confirmed it")
	b, err := os.ReadFile(f.bin)
	require.NoError(t, err)
	require.Contains(t, string(b), `echo "v1`, "the previous binary is back")
	require.NoFileExists(t, f.bin+".prev")
	// Not tried again: the old agent keeps running.
	pid, _ := strconv.Atoi(f.runs()[3])
	require.True(t, alive(pid))
}

func TestSuperviseUpgradeRollsBackWithoutConfirmation(t *testing.T) {
	f := newSupFixture(t)
	f.cfg.Trial = 500 * time.Millisecond
	f.script(f.bin, "v1", agentBody)
	f.script(f.bin+".new", "v2", agentBody) // runs, but nobody confirms it
	f.stage("v2")
	f.start()
	f.waitTags("v2", "v1")
	v2, _ := strconv.Atoi(f.runs()[1])
	require.False(t, alive(v2), "the unconfirmed binary was not stopped")
	rec := f.record()
	require.Equal(t, msg.UpgradeRolledBack, rec.State)
	require.Contains(t, rec.Error, "did not confirm v2 within 500ms")
}

func TestSuperviseRefusesAnUpgradeStagedForAnotherBinary(t *testing.T) {
	f := newSupFixture(t)
	f.script(f.bin, "v1", agentBody)
	rec := f.stage("v2")
	rec.Binary = filepath.Join(f.dir, "elsewhere")
	require.NoError(t, agent.WriteUpgradeRecord(f.state, rec))
	f.start()
	f.waitTags("v1")
	require.Eventually(t, func() bool { return f.record().State == msg.UpgradeFailed }, 5*time.Second, 10*time.Millisecond)
	require.Contains(t, f.record().Error, "staged for")
}

func TestSuperviseResumesATrialAfterARestart(t *testing.T) {
	f := newSupFixture(t)
	f.cfg.Trial = 500 * time.Millisecond
	// As after a reboot mid-trial: v2 in place, v1 kept aside, record on trial.
	f.script(f.bin, "v2", agentBody)
	f.script(f.bin+".prev", "v1", agentBody)
	rec := f.stage("v2")
	rec.State = msg.UpgradeTrial
	require.NoError(t, agent.WriteUpgradeRecord(f.state, rec))
	f.start()
	f.waitTags("v2", "v1")
	require.Equal(t, msg.UpgradeRolledBack, f.record().State)
}

func TestSupervisorConfigValidate(t *testing.T) {
	var c SupervisorConfig
	require.Error(t, c.Validate())
	c = SupervisorConfig{Binary: "/x", StateDir: "/y"}
	require.NoError(t, c.Validate())
	require.Equal(t, DefaultUpgradeTrial, c.Trial)
	require.Equal(t, 20*time.Second, c.StopTimeout)
}
