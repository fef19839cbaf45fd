package hyperv

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/protocol"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Hostile values: each would end a quoted string, run a subexpression,
// chain a command, escape with a backtick or start a new line if it were
// ever spliced into script text. PWNED marks them.
const (
	hostileName   = "web'1\"; $(Write-Output PWNED-name) `n\n& calc.exe; #"
	hostileDisk   = `D:\Ferry\it's $env:PWNED ; "x"` + "`" + `\disk0.vhdx`
	hostileDisk2  = "D:\\Ferry\\$(PWNED-disk)\r\n\\disk1.vhdx"
	hostileNIC    = "lan'; Remove-VM * -Force; 'PWNED-nic"
	hostileSwitch = "Ext\"ernal $PWNED-switch @(1) `$x"
)

var hostile = []string{hostileName, hostileDisk, hostileDisk2, hostileNIC, hostileSwitch}

func spec() driver.Spec {
	return driver.Spec{
		Name: "web1", Machine: "web1", CPUs: 2, Memory: 2 << 30, Firmware: "uefi",
		NICs: []driver.NIC{{Name: "lan", Network: "External LAN", MAC: "52:54:00:12:34:56"}},
		Disks: []driver.Disk{
			{Name: "disk0", Path: `D:\Ferry\web1\disk0.vhdx`, Format: "vhdx"},
			{Name: "disk1", Path: `D:\Ferry\web1\disk1.vhdx`, Format: "vhdx"},
		},
	}
}

func hostileSpec() driver.Spec {
	s := spec()
	s.Name, s.Machine = hostileName, hostileName
	s.NICs = []driver.NIC{
		{Name: hostileNIC, Network: hostileSwitch, MAC: "52-54-00-ab-cd-ef"},
		{Name: "backup", Network: hostileSwitch},
	}
	s.Disks = []driver.Disk{{Name: "d0", Path: hostileDisk, Format: "vhdx"}, {Name: "d1", Path: hostileDisk2, Format: "VHDX"}}
	return s
}

// requireNoValueInCode proves the values reached PowerShell only as data:
// not in any script text, not on any command line.
func requireNoValueInCode(t *testing.T, calls []call, values ...string) {
	t.Helper()
	require.NotEmpty(t, calls)
	for _, c := range calls {
		require.NotContains(t, c.Script, "PWNED")
		require.NotContains(t, strings.Join(c.Args, " "), "PWNED")
		for _, v := range values {
			require.NotContains(t, c.Script, v)
			for _, a := range c.Args {
				require.NotContains(t, a, v)
			}
		}
	}
}

func requireKind(t *testing.T, err error, kind driver.ErrorKind) {
	t.Helper()
	require.Error(t, err)
	var de *driver.Error
	require.ErrorAs(t, err, &de, "want a classified driver.Error, got %v", err)
	require.Equal(t, "hyperv", de.Driver)
	require.Equal(t, kind, de.Kind, "error: %v", err)
}

// TestScriptsGolden: each operation's script is the reviewed text in
// testdata/golden, and the command line carries it base64 UTF-16LE encoded.
func TestScriptsGolden(t *testing.T) {
	for _, op := range ops {
		text, err := script(op)
		require.NoError(t, err)
		checkGoldenScript(t, op, text)
		back, err := DecodeCommand(encodeCommand(text))
		require.NoError(t, err)
		require.Equal(t, text, back)
	}
	golden, err := filepath.Glob(filepath.Join("testdata", "golden", "*.ps1"))
	require.NoError(t, err)
	require.Len(t, golden, len(ops), "a golden script without an operation")
}

// TestScriptsNeverEvaluateValues: no script has a construct that turns data
// into code or a wildcard lookup by a value; every value is read from $p.
func TestScriptsNeverEvaluateValues(t *testing.T) {
	forbidden := regexp.MustCompile(`(?i)invoke-expression|\biex\b|invoke-command|\[scriptblock\]::create|newscriptblock|invokescript|` +
		`add-type|start-process|remove-item|-deletevhd|` + // no code, no processes, no file deletion
		`get-vm\s+-name|get-vmswitch\s+-name|-vmname\s|get-vm\s+\$`) // no wildcard lookups by name
	for _, op := range ops {
		text, err := script(op)
		require.NoError(t, err)
		require.Empty(t, forbidden.FindAllString(text, -1), "%s script", op)
		for _, m := range regexp.MustCompile(`\$env:\w+`).FindAllString(text, -1) {
			require.Equal(t, "$env:"+ParamsEnv, m, "%s script reads the environment", op)
		}
		require.Equal(t, 1, strings.Count(text, "$p = $env:"+ParamsEnv+" | ConvertFrom-Json"), "%s: parameters are parsed once, as JSON", op)
	}
}

// TestStartCreatesWithHostileNames: a missing machine is created, configured
// and started; the PowerShell sent is the golden text for each step and the
// hostile names travel only as JSON parameters, intact.
func TestStartCreatesWithHostileNames(t *testing.T) {
	f := newFake(t, "synthetic-inspect-none", "synthetic-create-off", "synthetic-op-running")
	d := f.driver(nil)
	require.NoError(t, d.Start(context.Background(), hostileSpec()))

	calls := f.calls()
	require.Equal(t, []string{opInspect, opCreate, opStart}, f.ops())
	requireNoValueInCode(t, calls, hostile...)

	require.Equal(t, params{Name: hostileName}, calls[0].params(t))
	require.Equal(t, params{
		Name: hostileName, Generation: 2, CPUs: 2, Memory: 2 << 30,
		NICs:  []nicParam{{Name: hostileNIC, Switch: hostileSwitch, MAC: "525400ABCDEF"}, {Name: "backup", Switch: hostileSwitch}},
		Disks: []string{hostileDisk, hostileDisk2},
	}, calls[1].params(t))
	require.Equal(t, params{ID: "6f1c2a8e-3b4d-4c5e-9f60-718293a4b5c6"}, calls[2].params(t))

	// The environment value is JSON with every control character escaped:
	// no raw newline or NUL can reach the Windows environment block.
	require.NotContains(t, calls[1].Params, "\n")
	require.NotContains(t, calls[1].Params, "\r")
	var seq []string
	for _, c := range calls {
		seq = append(seq, opOf(t, c)+"\t"+c.Params)
	}
	checkGolden(t, "start-create-hostile.calls", strings.Join(seq, "\n")+"\n")
}

// TestStartMapsSpec: firmware picks the generation, memory is rounded to
// Hyper-V's 2 MiB, NICs join the mapped switch (or the default one), a test
// machine's NICs join only the test switch or nothing, MACs are kept unless
// NewMACs.
func TestStartMapsSpec(t *testing.T) {
	cases := []struct {
		name   string
		opts   map[string]string
		edit   func(*driver.Spec)
		verify func(*testing.T, params)
	}{
		{"bios is generation 1", nil, func(s *driver.Spec) { s.Firmware = "bios" }, func(t *testing.T, p params) {
			require.Equal(t, 1, p.Generation)
		}},
		{"empty firmware is bios", nil, func(s *driver.Spec) { s.Firmware = "" }, func(t *testing.T, p params) {
			require.Equal(t, 1, p.Generation)
		}},
		{"uefi is generation 2 without secure boot", nil, nil, func(t *testing.T, p params) {
			require.Equal(t, 2, p.Generation)
			require.False(t, p.SecureBoot)
		}},
		{"secure boot on", map[string]string{OptSecureBoot: "on"}, nil, func(t *testing.T, p params) {
			require.True(t, p.SecureBoot)
		}},
		{"memory rounded up to 2 MiB", nil, func(s *driver.Spec) { s.Memory = 1000 << 20 }, func(t *testing.T, p params) {
			require.Equal(t, int64(1000<<20), p.Memory)
		}},
		{"odd memory", nil, func(s *driver.Spec) { s.Memory = 1001 << 20 }, func(t *testing.T, p params) {
			require.Equal(t, int64(1002<<20), p.Memory)
		}},
		{"mapped switch and kept MAC", nil, nil, func(t *testing.T, p params) {
			require.Equal(t, []nicParam{{Name: "lan", Switch: "External LAN", MAC: "525400123456"}}, p.NICs)
		}},
		{"default switch for an unmapped NIC", map[string]string{OptSwitch: "Default LAN"}, func(s *driver.Spec) { s.NICs[0].Network = "" }, func(t *testing.T, p params) {
			require.Equal(t, "Default LAN", p.NICs[0].Switch)
		}},
		{"new MACs", nil, func(s *driver.Spec) { s.NewMACs = true }, func(t *testing.T, p params) {
			require.Equal(t, "", p.NICs[0].MAC)
		}},
		{"test machine not connected", map[string]string{OptSwitch: "Default LAN"}, func(s *driver.Spec) { s.Test = true; s.Name = "web1-test" }, func(t *testing.T, p params) {
			require.Equal(t, "web1-test", p.Name)
			require.Equal(t, []nicParam{{Name: "lan", Switch: "", MAC: "525400123456"}}, p.NICs)
		}},
		{"test machine on the test switch", map[string]string{OptTestNetwork: "Ferry Isolated"}, func(s *driver.Spec) { s.Test = true; s.Name = "" }, func(t *testing.T, p params) {
			require.Equal(t, "web1-test", p.Name, "an unnamed test machine is MACHINE-test")
			require.Equal(t, "Ferry Isolated", p.NICs[0].Switch)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, "synthetic-inspect-none", "synthetic-create-off", "synthetic-op-running")
			s := spec()
			if tc.edit != nil {
				tc.edit(&s)
			}
			require.NoError(t, f.driver(tc.opts).Start(context.Background(), s))
			calls := f.calls()
			require.Equal(t, []string{opInspect, opCreate, opStart}, f.ops())
			tc.verify(t, calls[1].params(t))
		})
	}
}

// TestSpecRefusedBeforePowerShell: a spec Hyper-V cannot take is refused
// as invalid without running anything.
func TestSpecRefusedBeforePowerShell(t *testing.T) {
	cases := map[string]func(*driver.Spec){
		"vmdk disk":                 func(s *driver.Spec) { s.Disks[0].Format = "vmdk" },
		"vhd on generation 2":       func(s *driver.Spec) { s.Disks[0].Format = "vhd" },
		"no disks":                  func(s *driver.Spec) { s.Disks = nil },
		"no cpus":                   func(s *driver.Spec) { s.CPUs = 0 },
		"tiny memory":               func(s *driver.Spec) { s.Memory = 1 << 20 },
		"unknown firmware":          func(s *driver.Spec) { s.Firmware = "coreboot" },
		"bad MAC":                   func(s *driver.Spec) { s.NICs[0].MAC = "52:54:00:12:34" },
		"MAC not hex":               func(s *driver.Spec) { s.NICs[0].MAC = "52:54:00:12:34:zz" },
		"NIC with no switch":        func(s *driver.Spec) { s.NICs[0].Network = "" },
		"test with production name": func(s *driver.Spec) { s.Test = true },
		"no name":                   func(s *driver.Spec) { s.Name, s.Machine = "", "" },
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			f := newFake(t)
			s := spec()
			edit(&s)
			requireKind(t, f.driver(nil).Start(context.Background(), s), driver.KindInvalid)
			require.Empty(t, f.calls(), "nothing may run for a refused spec")
		})
	}
}

// TestStartExisting: an existing machine is started as it is only when its
// disks are the spec's; one with other disks is left alone (already running
// when it runs); two of the same name are refused.
func TestStartExisting(t *testing.T) {
	cases := []struct {
		name    string
		replies []string
		ops     []string
		kind    driver.ErrorKind // KindUnknown = success
	}{
		{"running with its disks", []string{"synthetic-inspect-running-noisy"}, []string{opInspect}, driver.KindUnknown},
		{"starting", []string{"synthetic-inspect-starting"}, []string{opInspect}, driver.KindUnknown},
		{"off", []string{"synthetic-inspect-off", "synthetic-op-running"}, []string{opInspect, opStart}, driver.KindUnknown},
		{"saved", []string{"synthetic-inspect-saved", "synthetic-op-running"}, []string{opInspect, opStart}, driver.KindUnknown},
		{"paused", []string{"synthetic-inspect-paused", "synthetic-op-running"}, []string{opInspect, opResume}, driver.KindUnknown},
		{"stopping", []string{"synthetic-inspect-stopping"}, []string{opInspect}, driver.KindTransient},
		{"running with other disks", []string{"synthetic-inspect-running-other-disks"}, []string{opInspect}, driver.KindAlreadyRunning},
		{"off with other disks", []string{"synthetic-inspect-off-other-disks"}, []string{opInspect}, driver.KindInvalid},
		{"two of that name", []string{"synthetic-inspect-two"}, []string{opInspect}, driver.KindInvalid},
		{"start refused", []string{"synthetic-inspect-off", "synthetic-error-busy"}, []string{opInspect, opStart}, driver.KindTransient},
		{"create refused", []string{"synthetic-inspect-none", "synthetic-error-switch-not-found"}, []string{opInspect, opCreate}, driver.KindNotFound},
		{"create bad argument", []string{"synthetic-inspect-none", "synthetic-error-invalid-argument"}, []string{opInspect, opCreate}, driver.KindInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, tc.replies...)
			err := f.driver(nil).Start(context.Background(), spec())
			if tc.kind == driver.KindUnknown {
				require.NoError(t, err)
			} else {
				requireKind(t, err, tc.kind)
			}
			require.Equal(t, tc.ops, f.ops())
		})
	}
}

// TestStatusParsesSyntheticOutputs: Get-VM answers become the right state,
// error records the right classified errors.
func TestStatusParsesSyntheticOutputs(t *testing.T) {
	cases := []struct {
		fixture string
		want    string
		kind    driver.ErrorKind
	}{
		{"synthetic-inspect-none", driver.StatusAbsent, 0},
		{"synthetic-inspect-running", driver.StatusRunning, 0},
		{"synthetic-inspect-running-noisy", driver.StatusRunning, 0},
		{"synthetic-inspect-runningcritical", driver.StatusRunning, 0},
		{"synthetic-inspect-paused", driver.StatusRunning, 0},
		{"synthetic-inspect-off", driver.StatusStopped, 0},
		{"synthetic-inspect-saved", driver.StatusStopped, 0},
		{"synthetic-inspect-starting", "", driver.KindTransient},
		{"synthetic-inspect-two", "", driver.KindInvalid},
		{"synthetic-error-not-found", "", driver.KindNotFound},
		{"synthetic-error-access-denied", "", driver.KindAuth},
		{"synthetic-error-access-denied-hresult", "", driver.KindAuth},
		{"synthetic-error-rpc-unavailable", "", driver.KindTransient},
		{"synthetic-error-busy", "", driver.KindTransient},
		{"synthetic-error-timeout", "", driver.KindTimeout},
		{"synthetic-error-no-shutdown-service", "", driver.KindUnknown},
		{"synthetic-garbage", "", driver.KindUnknown},
	}
	for _, tc := range cases {
		t.Run(tc.fixture, func(t *testing.T) {
			f := newFake(t, tc.fixture)
			got, err := f.driver(nil).Status(context.Background(), spec())
			if tc.want != "" {
				require.NoError(t, err)
				require.Equal(t, tc.want, got)
			} else {
				requireKind(t, err, tc.kind)
				if strings.HasPrefix(tc.fixture, "synthetic-error-") {
					var pe *PSError
					require.ErrorAs(t, err, &pe, "the error record is kept")
					require.NotEmpty(t, pe.Message)
				}
				if tc.fixture == "synthetic-garbage" {
					require.ErrorIs(t, err, ErrScript)
				}
			}
			require.Equal(t, []string{opInspect}, f.ops())
			require.Equal(t, params{Name: "web1"}, f.calls()[0].params(t))
		})
	}
}

// TestStop: a guest shutdown first; Stop-VM -TurnOff when it does not finish
// within shutdown-timeout or the guest cannot shut down; auth and transient
// failures are returned, never answered with a power-off.
func TestStop(t *testing.T) {
	cases := []struct {
		name    string
		replies []string
		ops     []string
		kind    driver.ErrorKind
	}{
		{"graceful", []string{"synthetic-inspect-running", "synthetic-op-off"}, []string{opInspect, opShutdown}, 0},
		{"already off", []string{"synthetic-inspect-off"}, []string{opInspect}, 0},
		{"paused is resumed first", []string{"synthetic-inspect-paused", "synthetic-op-running", "synthetic-op-off"}, []string{opInspect, opResume, opShutdown}, 0},
		{"shutdown hangs", []string{"synthetic-inspect-running", "hang", "synthetic-op-off"}, []string{opInspect, opShutdown, opTurnOff}, 0},
		{"no shutdown service", []string{"synthetic-inspect-running", "synthetic-error-no-shutdown-service", "synthetic-op-off"}, []string{opInspect, opShutdown, opTurnOff}, 0},
		{"access denied", []string{"synthetic-inspect-running", "synthetic-error-access-denied"}, []string{opInspect, opShutdown}, driver.KindAuth},
		{"busy", []string{"synthetic-inspect-running", "synthetic-error-busy"}, []string{opInspect, opShutdown}, driver.KindTransient},
		{"absent", []string{"synthetic-inspect-none"}, []string{opInspect}, driver.KindNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, tc.replies...)
			// A short shutdown-timeout only where the shutdown hangs: elsewhere a
			// slow start of the fake on a loaded machine must not look like
			// a hang.
			stopTimeout := "1m"
			if slices.Contains(tc.replies, "hang") {
				stopTimeout = "300ms"
			}
			err := f.driver(map[string]string{OptStopTimeout: stopTimeout}).Stop(context.Background(), spec())
			if tc.kind == 0 {
				require.NoError(t, err)
			} else {
				requireKind(t, err, tc.kind)
			}
			require.Equal(t, tc.ops, f.ops())
			for _, c := range f.calls()[1:] {
				require.Equal(t, params{ID: "6f1c2a8e-3b4d-4c5e-9f60-718293a4b5c6"}, c.params(t), "later calls name the machine by Id")
			}
		})
	}
}

// TestPauseResumeRemove: Suspend-VM, Resume-VM, Remove-VM (after a power
// off) on the machine found by name, each idempotent.
func TestPauseResumeRemove(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name    string
		do      func(*Driver) error
		replies []string
		ops     []string
		kind    driver.ErrorKind
	}{
		{"pause running", func(d *Driver) error { return d.Pause(ctx, spec()) }, []string{"synthetic-inspect-running", "synthetic-op-paused"}, []string{opInspect, opPause}, 0},
		{"pause paused", func(d *Driver) error { return d.Pause(ctx, spec()) }, []string{"synthetic-inspect-paused"}, []string{opInspect}, 0},
		{"pause absent", func(d *Driver) error { return d.Pause(ctx, spec()) }, []string{"synthetic-inspect-none"}, []string{opInspect}, driver.KindNotFound},
		{"resume paused", func(d *Driver) error { return d.Resume(ctx, spec()) }, []string{"synthetic-inspect-paused", "synthetic-op-running"}, []string{opInspect, opResume}, 0},
		{"resume running", func(d *Driver) error { return d.Resume(ctx, spec()) }, []string{"synthetic-inspect-running"}, []string{opInspect}, 0},
		{"remove running", func(d *Driver) error { return d.Remove(ctx, spec()) }, []string{"synthetic-inspect-running", "synthetic-op-off", "synthetic-op-removed"}, []string{opInspect, opTurnOff, opRemove}, 0},
		{"remove off", func(d *Driver) error { return d.Remove(ctx, spec()) }, []string{"synthetic-inspect-off", "synthetic-op-removed"}, []string{opInspect, opRemove}, 0},
		{"remove absent", func(d *Driver) error { return d.Remove(ctx, spec()) }, []string{"synthetic-inspect-none"}, []string{opInspect}, 0},
		{"remove someone else's", func(d *Driver) error { return d.Remove(ctx, spec()) }, []string{"synthetic-inspect-off-other-disks"}, []string{opInspect}, driver.KindInvalid},
		{"remove denied", func(d *Driver) error { return d.Remove(ctx, spec()) }, []string{"synthetic-inspect-off", "synthetic-error-access-denied"}, []string{opInspect, opRemove}, driver.KindAuth},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, tc.replies...)
			err := tc.do(f.driver(nil))
			if tc.kind == 0 {
				require.NoError(t, err)
			} else {
				requireKind(t, err, tc.kind)
			}
			require.Equal(t, tc.ops, f.ops())
		})
	}
}

// TestOperationsWithHostileNames: every operation keeps hostile names out
// of the script text and the command line.
func TestOperationsWithHostileNames(t *testing.T) {
	ctx := context.Background()
	s := hostileSpec()
	s.Disks = spec().Disks // so the synthetic machine's disks match
	for name, tc := range map[string]struct {
		do      func(*Driver) error
		replies []string
	}{
		"stop":   {func(d *Driver) error { return d.Stop(ctx, s) }, []string{"synthetic-inspect-running", "hang", "synthetic-op-off"}},
		"pause":  {func(d *Driver) error { return d.Pause(ctx, s) }, []string{"synthetic-inspect-running", "synthetic-op-paused"}},
		"resume": {func(d *Driver) error { return d.Resume(ctx, s) }, []string{"synthetic-inspect-paused", "synthetic-op-running"}},
		"remove": {func(d *Driver) error { return d.Remove(ctx, s) }, []string{"synthetic-inspect-running", "synthetic-op-off", "synthetic-op-removed"}},
		"status": {func(d *Driver) error { _, err := d.Status(ctx, s); return err }, []string{"synthetic-inspect-running"}},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFake(t, tc.replies...)
			require.NoError(t, tc.do(f.driver(map[string]string{OptStopTimeout: "300ms"})))
			calls := f.calls()
			requireNoValueInCode(t, calls, hostile...)
			require.Equal(t, hostileName, calls[0].params(t).Name)
		})
	}
}

// TestValidate: targets add's up-front check: options, powershell.exe,
// the Hyper-V module and access (probe), the configured switches.
func TestValidate(t *testing.T) {
	ctx := context.Background()
	f := newFake(t, "synthetic-probe")
	exe := f.exe
	ok := map[string]string{OptPowerShell: exe, OptSwitch: "External LAN", OptTestNetwork: "ferry isolated", OptNetworks: "External LAN,Ferry Isolated"}
	require.NoError(t, Validate(ctx, ok))
	require.Equal(t, []string{opProbe}, f.ops())
	require.Equal(t, params{}, f.calls()[0].params(t))

	cases := []struct {
		name    string
		opts    map[string]string
		replies []string
		kind    driver.ErrorKind
	}{
		{"missing switch", map[string]string{OptPowerShell: exe, OptSwitch: "Nope"}, []string{"synthetic-probe"}, driver.KindNotFound},
		{"missing mapped switch", map[string]string{OptPowerShell: exe, OptNetworks: "External LAN, Nope"}, []string{"synthetic-probe"}, driver.KindNotFound},
		{"missing test switch", map[string]string{OptPowerShell: exe, OptTestNetwork: "Nope"}, []string{"synthetic-probe"}, driver.KindNotFound},
		{"access denied", ok, []string{"synthetic-error-access-denied"}, driver.KindAuth},
		{"no Hyper-V module", ok, []string{"synthetic-error-no-module"}, driver.KindNotFound},
		{"probe hangs", map[string]string{OptPowerShell: exe, OptTimeout: "300ms"}, []string{"hang"}, driver.KindTimeout},
		{"no powershell", map[string]string{OptPowerShell: filepath.Join(t.TempDir(), "powershell.exe")}, nil, driver.KindInvalid},
		{"unknown option", map[string]string{OptPowerShell: exe, "uri": "qemu:///system"}, nil, driver.KindInvalid},
		{"bad stop timeout", map[string]string{OptPowerShell: exe, OptStopTimeout: "soon"}, nil, driver.KindInvalid},
		{"secure boot maybe", map[string]string{OptPowerShell: exe, OptSecureBoot: "maybe"}, nil, driver.KindInvalid},
		{"test switch is production", map[string]string{OptPowerShell: exe, OptSwitch: "LAN", OptTestNetwork: "LAN"}, nil, driver.KindInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, tc.replies...)
			opts := map[string]string{}
			for k, v := range tc.opts {
				if v == exe {
					v = f.exe // this case's fake
				}
				opts[k] = v
			}
			err := Validate(ctx, opts)
			requireKind(t, err, tc.kind)
			require.Len(t, f.calls(), len(tc.replies))
		})
	}
}

// TestTimeoutIsClassifiedNotRetried: a PowerShell run that does not end
// within the timeout is killed and reported as a timeout naming it, which
// the job engine does not retry (only transient errors are).
func TestTimeoutIsClassifiedNotRetried(t *testing.T) {
	f := newFake(t, "hang")
	_, err := f.driver(map[string]string{OptTimeout: "300ms"}).Status(context.Background(), spec())
	requireKind(t, err, driver.KindTimeout)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	var de *driver.Error
	require.ErrorAs(t, err, &de)
	require.False(t, de.Retryable())
	require.False(t, protocol.Retryable(err), "the driver error's Retryable decides before context.DeadlineExceeded")
	require.Contains(t, err.Error(), "300ms")
}

// TestDefaultPowerShellFromPath: with no powershell option the driver runs
// powershell.exe found on PATH (here the fake, first on PATH).
func TestDefaultPowerShellFromPath(t *testing.T) {
	f := newFake(t, "synthetic-probe", "synthetic-inspect-off")
	t.Setenv("PATH", f.dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	require.NoError(t, Validate(context.Background(), nil))
	d, err := New(nil)
	require.NoError(t, err)
	got, err := d.Status(context.Background(), spec())
	require.NoError(t, err)
	require.Equal(t, driver.StatusStopped, got)
	require.Equal(t, []string{opProbe, opInspect}, f.ops())
}

// TestParamsEnvIsReplaced: an inherited FERRY_HYPERV_PARAMS never reaches
// the script: the driver's own value replaces it.
func TestParamsEnvIsReplaced(t *testing.T) {
	t.Setenv(ParamsEnv, `{"name":"PWNED-inherited"}`)
	f := newFake(t, "synthetic-inspect-none")
	_, err := f.driver(nil).Status(context.Background(), spec())
	require.NoError(t, err)
	c := f.calls()[0]
	require.Equal(t, params{Name: "web1"}, c.params(t))
	var raw map[string]any
	require.NoError(t, json.Unmarshal([]byte(c.Params), &raw))
}
