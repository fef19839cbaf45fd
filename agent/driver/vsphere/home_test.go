package vsphere

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferrydr/ferry/agent/driver"
)

// homeVM is a VM of govmomi's VPX model, powered on: the machine as it
// runs at its home site, which Ferry did not create.
const homeVM = "DC0_H0_VM0"

// homeOpts are a home site's options on the simulator: how to reach
// vCenter, no datastore.
func homeOpts(s *sim) map[string]string {
	return map[string]string{OptURL: s.opts[OptURL], OptCredentialsFile: s.opts[OptCredentialsFile],
		OptDatacenter: s.opts[OptDatacenter], OptInsecure: "true", OptShutdownTimeout: "5s"}
}

// TestHomeDriver: at the home site the driver powers the existing VM and
// changes nothing else. Stop shuts it down (status stopped, the API says
// poweredOff); Start powers it on with its own hardware, though the spec
// carries other CPUs, memory, disks and NICs; Pause suspends and Resume
// powers on; Start of a VM that is not there is not found and creates
// nothing; Remove is refused and the VM stays. A former target's options
// (datastore, pool, …) are ignored at home.
func TestHomeDriver(t *testing.T) {
	ctx := context.Background()
	s := newSim(t, false)
	before := readVM(t, s, homeVM)
	require.Equal(t, types.VirtualMachinePowerStatePoweredOn, before.power, "precondition")
	vms := s.VMNames(t)

	opts := homeOpts(s)
	opts[OptDatastore], opts[OptPool], opts[OptVMDir] = simNFSName, simPool, "ferry-vms" // as a former target carries them
	h, err := NewHome(opts)
	require.NoError(t, err)
	spec := driver.Spec{Name: homeVM, Machine: "app", CPUs: 8, Memory: 8 << 30, Firmware: "uefi",
		NICs:  []driver.NIC{{Name: "lan", Network: simTestNet}},
		Disks: []driver.Disk{{Name: "d", Path: "/nowhere/d.raw", Format: "raw"}}}
	status := func() string {
		t.Helper()
		st, err := h.Status(ctx, spec)
		require.NoError(t, err)
		return st
	}
	require.Equal(t, driver.StatusRunning, status())

	require.NoError(t, h.Stop(ctx, spec))
	require.Equal(t, driver.StatusStopped, status())
	require.Equal(t, types.VirtualMachinePowerStatePoweredOff, readVM(t, s, homeVM).power)
	require.NoError(t, h.Stop(ctx, spec), "stopping a stopped VM succeeds")

	require.NoError(t, h.Start(ctx, spec))
	require.Equal(t, driver.StatusRunning, status())
	after := readVM(t, s, homeVM)
	require.Equal(t, before.cpus, after.cpus, "the home VM's hardware is its own")
	require.Equal(t, before.memoryMB, after.memoryMB)
	require.Equal(t, before.firmware, after.firmware)
	require.Equal(t, disksOf(before), disksOf(after))
	require.Equal(t, len(before.cards), len(after.cards))
	require.NoError(t, h.Start(ctx, spec), "starting a running VM succeeds")

	require.NoError(t, h.Pause(ctx, spec))
	require.Equal(t, types.VirtualMachinePowerStateSuspended, readVM(t, s, homeVM).power)
	require.Equal(t, driver.StatusStopped, status())
	require.NoError(t, h.Resume(ctx, spec))
	require.Equal(t, driver.StatusRunning, status())

	err = h.Remove(ctx, spec)
	require.Equal(t, driver.KindInvalid, driver.KindOf(err), "%v", err)
	require.NotNil(t, s.vm(t, homeVM), "the home VM is never removed")

	absent := driver.Spec{Name: "no-such-vm", Machine: "app", CPUs: 1, Memory: 64 << 20,
		Disks: []driver.Disk{{Name: "d", Path: "/nowhere/d.raw", Format: "raw"}}}
	err = h.Start(ctx, absent)
	require.Equal(t, driver.KindNotFound, driver.KindOf(err), "%v", err)
	require.False(t, (err.(interface{ Retryable() bool })).Retryable())
	st, err := h.Status(ctx, absent)
	require.NoError(t, err)
	require.Equal(t, driver.StatusAbsent, st)
	require.ElementsMatch(t, vms, s.VMNames(t), "nothing was created or removed")
}

// TestValidateHome: the home check logs in and finds the datacenter;
// options of a target's VM creation are refused naming the option; a wrong
// password is an auth error, a missing datacenter not found, a missing url
// or credentials file invalid.
func TestValidateHome(t *testing.T) {
	ctx := context.Background()
	s := newSim(t, false)
	require.NoError(t, ValidateHome(ctx, homeOpts(s)))

	opts := homeOpts(s)
	opts[OptDatastore] = simNFSName
	err := ValidateHome(ctx, opts)
	require.Equal(t, driver.KindInvalid, driver.KindOf(err), "%v", err)
	require.ErrorContains(t, err, "datastore is not an option of the vsphere driver at the home site")

	opts = homeOpts(s)
	opts[OptDatacenter] = "DC9"
	require.Equal(t, driver.KindNotFound, driver.KindOf(ValidateHome(ctx, opts)))

	opts = homeOpts(s)
	opts[OptCredentialsFile] = writeCreds(t, "user="+simUser+"\npassword=wrong\n")
	require.Equal(t, driver.KindAuth, driver.KindOf(ValidateHome(ctx, opts)))

	for _, k := range []string{OptURL, OptCredentialsFile} {
		opts = homeOpts(s)
		delete(opts, k)
		err := ValidateHome(ctx, opts)
		require.Equal(t, driver.KindInvalid, driver.KindOf(err), "%s: %v", k, err)
		require.ErrorContains(t, err, k+" is required")
	}
}

func writeCreds(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cred")
	require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
	return p
}
