package installer

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/protocol/msg"
)

func winEnv(k string) string {
	return map[string]string{"ProgramFiles": `C:\Program Files`, "ProgramData": `D:\PD`}[k]
}

func TestDefaultLayout(t *testing.T) {
	l := DefaultLayout("linux", "", os.Getenv)
	require.Equal(t, Layout{
		Binary: "/usr/local/bin/ferry-agent", ConfigDir: "/etc/ferry", ConfigFile: "/etc/ferry/ferry-agent.yaml",
		Manifest: "/etc/ferry/ferry-agent.installed.json", StateDir: "/var/lib/ferry-agent",
		LogFile: "/var/log/ferry-agent.log", PIDFile: "/var/run/ferry-agent.pid",
	}, l)
	// Another name gets paths of its own everywhere.
	o := DefaultLayout("linux", "ferry-agent-t1", os.Getenv)
	for _, p := range []string{o.Binary, o.ConfigFile, o.Manifest, o.StateDir, o.LogFile, o.PIDFile} {
		require.Contains(t, p, "ferry-agent-t1")
	}
}

// TestWindowsLayout checks Windows paths, built here on any OS: the state
// directory is the agent's default, %ProgramData%\Ferry\agent.
func TestWindowsLayout(t *testing.T) {
	l := DefaultLayout("windows", DefaultServiceName, winEnv)
	require.Equal(t, Layout{
		Binary: `C:\Program Files\Ferry\ferry-agent.exe`, ConfigDir: `D:\PD\Ferry`, ConfigFile: `D:\PD\Ferry\ferry-agent.yaml`,
		Manifest: `D:\PD\Ferry\ferry-agent.installed.json`, StateDir: `D:\PD\Ferry\agent`, LogFile: `D:\PD\Ferry\logs\ferry-agent.log`,
	}, l)
	require.Equal(t, `C:\ProgramData\Ferry\agent`, DefaultLayout("windows", "", func(string) string { return "" }).StateDir)
	require.Equal(t, `D:\PD\Ferry\other`, DefaultLayout("windows", "other", winEnv).StateDir)
	c := DefaultAgentConfig(l, "windows")
	require.Equal(t, l.LogFile, c.LogFile, "a Windows service has no journal: the agent logs to a file")
	require.Empty(t, DefaultAgentConfig(DefaultLayout("linux", "", os.Getenv), "linux").LogFile)
}

// TestWindowsServiceDefinition checks what kardianos is given to create the
// Windows service: the installed executable, the supervisor's arguments,
// automatic (delayed) start and restart on failure.
func TestWindowsServiceDefinition(t *testing.T) {
	l := DefaultLayout("windows", DefaultServiceName, winEnv)
	def, err := definition(SystemWindows, DefaultServiceName, l)
	require.NoError(t, err)
	require.Equal(t, "ferry-agent", def.Name)
	require.Equal(t, "Ferry agent", def.DisplayName)
	require.Equal(t, `C:\Program Files\Ferry\ferry-agent.exe`, def.Executable)
	require.Equal(t, []string{"run", "--config", `D:\PD\Ferry\ferry-agent.yaml`, "--supervise"}, def.Arguments)
	require.Equal(t, "automatic", def.Option["StartType"])
	require.Equal(t, true, def.Option["DelayedAutoStart"])
	require.Equal(t, "restart", def.Option["OnFailure"])
	require.Equal(t, "5s", def.Option["OnFailureDelayDuration"])
	require.Equal(t, 86400, def.Option["OnFailureResetPeriod"])
	require.NotContains(t, def.Option, "SystemdScript")

	other, err := definition(SystemWindows, "ferry-agent-b", DefaultLayout("windows", "ferry-agent-b", winEnv))
	require.NoError(t, err)
	require.Equal(t, "Ferry agent (ferry-agent-b)", other.DisplayName, "two agents on one host are told apart in services.msc")

	_, err = definition("linux-upstart", DefaultServiceName, l)
	require.ErrorIs(t, err, ErrUnsupportedSystem)
}

func TestServiceDefinitionsCarryTheRenderedFiles(t *testing.T) {
	l := DefaultLayout("linux", "ferry-agent-x", os.Getenv)
	def, err := definition(SystemSystemd, "ferry-agent-x", l)
	require.NoError(t, err)
	require.Equal(t, SystemdUnit("ferry-agent-x", l), def.Option["SystemdScript"])
	def, err = definition(SystemSysV, "ferry-agent-x", l)
	require.NoError(t, err)
	require.Equal(t, SysVScript("ferry-agent-x", l), def.Option["SysvScript"])
	// kardianos renders these as templates: they must hold no actions.
	for _, s := range []string{SystemdUnit("ferry-agent-x", l), SysVScript("ferry-agent-x", l)} {
		require.NotContains(t, s, "{{")
	}
}

// TestSystemdUnitVerifies runs systemd's own checker on the unit, offline.
func TestSystemdUnitVerifies(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("systemd units are Linux's")
	}
	analyze := testenv.RequireTool(t, "systemd-analyze")
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin dir", "ferry-agent-verify") // a space: ExecStart quoting
	require.NoError(t, os.MkdirAll(filepath.Dir(bin), 0o755))
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755))
	l := DefaultLayout("linux", "ferry-agent-verify", os.Getenv)
	l.Binary = bin
	unit := SystemdUnit("ferry-agent-verify", l)
	require.Contains(t, unit, `ExecStart="`+bin+`" run --config /etc/ferry/ferry-agent-verify.yaml --supervise`)
	for _, want := range []string{"Restart=on-failure", "KillMode=mixed", "NoNewPrivileges=yes", "ProtectSystem=full",
		`ReadWritePaths="` + filepath.Dir(bin) + `"`, "WantedBy=multi-user.target"} {
		require.Contains(t, unit, want+"\n")
	}
	path := filepath.Join(dir, "ferry-agent-verify.service")
	require.NoError(t, os.WriteFile(path, []byte(unit), 0o644))
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	require.NoError(t, err, "systemd-analyze verify: %s", out)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.Contains(line, "ferry-agent-verify") {
			t.Errorf("systemd-analyze has a remark on the unit: %s", line)
		}
	}

	// The check can fail: a relative ExecStart is refused.
	l.Binary = "relative/ferry-agent"
	bad := filepath.Join(dir, "bad.service")
	require.NoError(t, os.WriteFile(bad, []byte(SystemdUnit("bad", l)), 0o644))
	_, err = exec.Command(analyze, "verify", bad).CombinedOutput()
	require.Error(t, err)
}

func TestSysVScriptIsValidShell(t *testing.T) {
	sh := testenv.RequireTool(t, "sh")
	l := DefaultLayout("linux", "it's-quoted", os.Getenv)
	script := SysVScript("it's-quoted", l)
	path := filepath.Join(t.TempDir(), "init")
	require.NoError(t, os.WriteFile(path, []byte(script), 0o755))
	out, err := exec.Command(sh, "-n", path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, script, "# Provides:          it's-quoted\n")
	require.Contains(t, script, `name='it'\''s-quoted'`)
	// Unknown verbs are a usage error; status of a service never started is
	// LSB's "not running" (3).
	err = exec.Command(sh, path, "bogus").Run()
	require.Equal(t, 2, exitCode(err))
	err = exec.Command(sh, path, "status").Run()
	require.Equal(t, 3, exitCode(err))
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestSystemdQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/usr/local/bin/ferry-agent": "/usr/local/bin/ferry-agent",
		"--config":                   "--config",
		"/opt/my dir/a":              `"/opt/my dir/a"`,
		`a"b`:                        `"a\"b"`,
		"100%":                       "100%%",
		"$HOME":                      "$$HOME",
		"":                           `""`,
	} {
		require.Equal(t, want, systemdQuote(in), "%q", in)
	}
	require.Equal(t, `'a'\''b'`, shQuote("a'b"))
}

// TestServiceCommandLineKeepsPermissions: what install was told the agent
// allows is on the service's command line under every service manager, and
// nothing is allowed when it was not told.
func TestServiceCommandLineKeepsPermissions(t *testing.T) {
	l := DefaultLayout("linux", "ferry-agent-x", os.Getenv)
	for _, s := range []string{SystemdUnit("ferry-agent-x", l), SysVScript("ferry-agent-x", l)} {
		require.NotContains(t, s, "--allow-")
	}
	l.Allow = msg.Permissions{PlanScripts: true, ExecDrivers: true}
	require.Contains(t, SystemdUnit("ferry-agent-x", l), "ExecStart=/usr/local/bin/ferry-agent-x run --config /etc/ferry/ferry-agent-x.yaml --supervise --allow-plan-scripts --allow-exec-drivers\n")
	require.Contains(t, SysVScript("ferry-agent-x", l), "'--supervise' '--allow-plan-scripts' '--allow-exec-drivers' >>")
	def, err := definition(SystemWindows, "ferry-agent-x", l)
	require.NoError(t, err)
	require.Equal(t, []string{"run", "--config", l.ConfigFile, "--supervise", "--allow-plan-scripts", "--allow-exec-drivers"}, def.Arguments)
	l.Allow = msg.Permissions{ExecDrivers: true}
	require.Equal(t, []string{"run", "--config", l.ConfigFile, "--supervise", "--allow-exec-drivers"}, l.serviceArgs())

	var cfg Config
	cfg.Allow = msg.Permissions{PlanScripts: true}
	require.NoError(t, cfg.Validate())
	require.Equal(t, cfg.Allow, cfg.Layout.Allow, "Config.Allow reaches the layout the service is defined from")
}
