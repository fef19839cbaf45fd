package hyperv

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/driver"
)

// homeSpec is what the controller sends for a home machine: its names only
// (protect --domain), here a hostile one, and disks the Home wrapper must
// not pass on.
func homeSpec() driver.Spec {
	s := spec()
	s.Name, s.Machine = hostileName, "web1"
	s.NICs = []driver.NIC{{Name: hostileNIC, Network: hostileSwitch}}
	return s
}

// TestHomeDriver: at the home site the driver only powers the existing
// machine. Each operation sends the fixed scripts (golden) with the hostile
// name as a parameter only; Start of an absent machine is not found and
// creates nothing; Remove runs nothing; the target's options a former
// target carries (switch, secure-boot) are ignored.
func TestHomeDriver(t *testing.T) {
	ctx := context.Background()
	for name, tc := range map[string]struct {
		do      func(driver.Hypervisor) error
		replies []string
		ops     []string
		kind    driver.ErrorKind // KindUnknown = success
	}{
		"start off":       {func(h driver.Hypervisor) error { return h.Start(ctx, homeSpec()) }, []string{"synthetic-inspect-off", "synthetic-op-running"}, []string{opInspect, opStart}, driver.KindUnknown},
		"start running":   {func(h driver.Hypervisor) error { return h.Start(ctx, homeSpec()) }, []string{"synthetic-inspect-running"}, []string{opInspect}, driver.KindUnknown},
		"start paused":    {func(h driver.Hypervisor) error { return h.Start(ctx, homeSpec()) }, []string{"synthetic-inspect-paused", "synthetic-op-running"}, []string{opInspect, opResume}, driver.KindUnknown},
		"start absent":    {func(h driver.Hypervisor) error { return h.Start(ctx, homeSpec()) }, []string{"synthetic-inspect-none"}, []string{opInspect}, driver.KindNotFound},
		"stop running":    {func(h driver.Hypervisor) error { return h.Stop(ctx, homeSpec()) }, []string{"synthetic-inspect-running", "synthetic-op-off"}, []string{opInspect, opShutdown}, driver.KindUnknown},
		"stop hangs":      {func(h driver.Hypervisor) error { return h.Stop(ctx, homeSpec()) }, []string{"synthetic-inspect-running", "hang", "synthetic-op-off"}, []string{opInspect, opShutdown, opTurnOff}, driver.KindUnknown},
		"stop off":        {func(h driver.Hypervisor) error { return h.Stop(ctx, homeSpec()) }, []string{"synthetic-inspect-off"}, []string{opInspect}, driver.KindUnknown},
		"pause":           {func(h driver.Hypervisor) error { return h.Pause(ctx, homeSpec()) }, []string{"synthetic-inspect-running", "synthetic-op-paused"}, []string{opInspect, opPause}, driver.KindUnknown},
		"resume":          {func(h driver.Hypervisor) error { return h.Resume(ctx, homeSpec()) }, []string{"synthetic-inspect-paused", "synthetic-op-running"}, []string{opInspect, opResume}, driver.KindUnknown},
		"remove refused":  {func(h driver.Hypervisor) error { return h.Remove(ctx, homeSpec()) }, nil, nil, driver.KindInvalid},
		"status running":  {func(h driver.Hypervisor) error { return wantStatus(ctx, h, driver.StatusRunning) }, []string{"synthetic-inspect-running"}, []string{opInspect}, driver.KindUnknown},
		"status off":      {func(h driver.Hypervisor) error { return wantStatus(ctx, h, driver.StatusStopped) }, []string{"synthetic-inspect-off"}, []string{opInspect}, driver.KindUnknown},
		"status absent":   {func(h driver.Hypervisor) error { return wantStatus(ctx, h, driver.StatusAbsent) }, []string{"synthetic-inspect-none"}, []string{opInspect}, driver.KindUnknown},
		"status denied":   {func(h driver.Hypervisor) error { return wantStatus(ctx, h, "") }, []string{"synthetic-error-access-denied"}, []string{opInspect}, driver.KindAuth},
		"status no vm":    {func(h driver.Hypervisor) error { return wantStatus(ctx, h, "") }, []string{"synthetic-error-not-found"}, []string{opInspect}, driver.KindNotFound},
		"status too long": {func(h driver.Hypervisor) error { return wantStatus(ctx, h, "") }, []string{"hang"}, []string{opInspect}, driver.KindTimeout},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFake(t, tc.replies...)
			h, err := NewHome(map[string]string{OptPowerShell: f.exe, OptStopTimeout: "300ms", OptTimeout: "2s",
				OptSwitch: "LAN", OptSecureBoot: "on"})
			require.NoError(t, err)
			err = tc.do(h)
			if tc.kind == driver.KindUnknown {
				require.NoError(t, err)
			} else {
				requireKind(t, err, tc.kind)
			}
			require.Equal(t, tc.ops, f.ops())
			calls := f.calls()
			for _, c := range calls {
				require.NotEqual(t, opCreate, opOf(t, c), "nothing is created at home")
			}
			if len(calls) > 0 {
				requireNoValueInCode(t, calls, hostileName, hostileNIC, hostileSwitch)
				p := calls[0].params(t)
				require.Equal(t, params{Name: hostileName}, p, "the inspect gets the name as a parameter and nothing else")
			}
		})
	}
}

func wantStatus(ctx context.Context, h driver.Hypervisor, want string) error {
	got, err := h.Status(ctx, homeSpec())
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("status %q, want %q", got, want)
	}
	return nil
}

// TestValidateHome: the home site's check probes the host and refuses the
// options that only a target takes, naming the option.
func TestValidateHome(t *testing.T) {
	ctx := context.Background()
	f := newFake(t, "synthetic-probe")
	require.NoError(t, ValidateHome(ctx, map[string]string{OptPowerShell: f.exe, OptStopTimeout: "1m"}))
	require.Equal(t, []string{opProbe}, f.ops())

	f = newFake(t)
	err := ValidateHome(ctx, map[string]string{OptPowerShell: f.exe, OptSwitch: "LAN"})
	requireKind(t, err, driver.KindInvalid)
	require.ErrorContains(t, err, "switch is not an option of the hyperv driver at the home site")
	require.Empty(t, f.ops(), "refused before PowerShell runs")

	_, err = NewHome(map[string]string{"uri": "qemu:///system"})
	requireKind(t, err, driver.KindInvalid)
}
