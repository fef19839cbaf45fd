package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// fakePowerShell is a fake powershell.exe for agents on Linux (there is no
// Hyper-V here): a /bin/sh script that records its arguments and prints the
// synthetic fixture (agent/driver/hyperv/testdata) the test set, exiting
// with its code.
type fakePowerShell struct{ dir string }

const fakePowerShellScript = `#!/bin/sh
d=$(dirname "$0")
printf '%s\n' "$@" > "$d/args"
cat "$(cat "$d/reply")"
exit "$(cat "$d/exit")"
`

func newFakePowerShell(t *testing.T) *fakePowerShell {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		testenv.Require(t, false, "the fake powershell.exe is a /bin/sh script: "+err.Error())
	}
	f := &fakePowerShell{dir: t.TempDir()}
	require.NoError(t, os.WriteFile(filepath.Join(f.dir, "powershell.exe"), []byte(fakePowerShellScript), 0o755))
	return f
}

// reply makes the fake answer with a fixture and exit code.
func (f *fakePowerShell) reply(t *testing.T, fixture string, exit string) {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "agent", "driver", "hyperv", "testdata", fixture+".txt"))
	require.NoError(t, err)
	require.FileExists(t, p)
	require.NoError(t, os.WriteFile(filepath.Join(f.dir, "reply"), []byte(p), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(f.dir, "exit"), []byte(exit), 0o644))
	_ = os.Remove(filepath.Join(f.dir, "args"))
}

// ran reports whether the fake was run since the last reply, with the
// driver's fixed command line (an -EncodedCommand script).
func (f *fakePowerShell) ran(t *testing.T) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, "args"))
	if os.IsNotExist(err) {
		return false
	}
	require.NoError(t, err)
	return strings.Contains(string(b), "-EncodedCommand")
}

// TestTargetsAddHyperVValidates: `ferry targets add --driver hyperv` is
// checked through the target agent, which runs the driver's probe script
// in powershell.exe (a fake on the agent's PATH answering with synthetic
// fixtures). An agent without powershell.exe refuses (invalid, naming it);
// a probe that fails with access denied is refused as unauthorized, one
// without the Hyper-V module as not found; a switch the host does not have
// (the default switch, or a network map destination) as not found; bad
// secure-boot and duration values, another driver's option and a disk
// format other than vhdx as invalid.
// Each refusal stores nothing. A good target is stored with the Hyper-V
// options given as flags.
func TestTargetsAddHyperVValidates(t *testing.T) {
	_, err := exec.LookPath("powershell.exe")
	require.Error(t, err, "precondition: no powershell.exe on this host's PATH")
	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "bare")
	refuseTarget(t, c, "invalid", []string{"hv", "--agent", "bare", "--dir", t.TempDir(), "--driver", "hyperv", "--format", "vhdx"},
		"hyperv driver validate: invalid", "powershell.exe", "runs on the Windows Hyper-V host")

	ps := newFakePowerShell(t)
	t.Setenv("PATH", ps.dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	EnrollAgent(t, c, c.Addr, "win")
	base := []string{"hv", "--agent", "win", "--dir", t.TempDir(), "--driver", "hyperv", "--format", "vhdx"}
	args := func(extra ...string) []string { return append(append([]string{}, base...), extra...) }

	ps.reply(t, "synthetic-error-access-denied", "1")
	refuseTarget(t, c, "unauthorized", args(), "hyperv driver validate: auth", "You do not have the required permission")
	require.True(t, ps.ran(t), "the agent ran the probe script in the fake powershell.exe")
	ps.reply(t, "synthetic-error-no-module", "1")
	refuseTarget(t, c, "not_found", args(), "The term Get-VM was not found")
	require.True(t, ps.ran(t))

	ps.reply(t, "synthetic-probe", "0") // switches "External LAN" and "Ferry Isolated"
	refuseTarget(t, c, "not_found", args("--switch", "Nope"), `switch "Nope": no such virtual switch`, "External LAN, Ferry Isolated")
	refuseTarget(t, c, "not_found", args("--network", "lan=DMZ"), `networks "DMZ": no such virtual switch`)
	ps.reply(t, "synthetic-probe", "0")
	refuseTarget(t, c, "invalid", args("--secure-boot", "maybe"), `secure-boot="maybe": want on or off`)
	refuseTarget(t, c, "invalid", args("--powershell-timeout", "-1s"), "powershell-timeout")
	refuseTarget(t, c, "invalid", args("--shutdown-timeout", "soon"), "shutdown-timeout")
	refuseTarget(t, c, "invalid", args("--switch", "Ferry Isolated", "--test-network", "Ferry Isolated"), "a test failover must not join the production switch")
	refuseTarget(t, c, "invalid", args("--uri", "qemu:///system"), "--uri is not an option of the hyperv driver")
	refuseTarget(t, c, "invalid", []string{"hv", "--agent", "win", "--dir", t.TempDir(), "--driver", "hyperv"}, "the hyperv driver runs machines on vhdx disks, not raw")
	require.False(t, ps.ran(t), "bad options are refused before any PowerShell runs")

	c.MustFerry(append([]string{"targets", "add"}, args("--switch", "External LAN", "--test-network", "Ferry Isolated",
		"--network", "lan=External LAN", "--powershell", "powershell.exe", "--shutdown-timeout", "45s", "--powershell-timeout", "2m", "--secure-boot", "on")...)...)
	require.True(t, ps.ran(t))
	var ts []storedTarget
	c.JSON(&ts, "targets", "list")
	require.Len(t, ts, 1)
	require.Equal(t, "hyperv", ts[0].Driver)
	require.Equal(t, map[string]string{"switch": "External LAN", "powershell": "powershell.exe", "shutdown-timeout": "45s",
		"powershell-timeout": "2m", "secure-boot": "on"}, ts[0].Options)
	require.Equal(t, map[string]string{"lan": "External LAN"}, ts[0].Networks)
	require.Equal(t, "Ferry Isolated", ts[0].TestNetwork)
}
