package vsphere

import (
	"bytes"
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferrydr/ferry/agent/driver"
)

// inject makes every call of method fail with f (after delayMS) until the
// rules are cleared. (Not MaxCount: vcsim reads a rule's count under a read
// lock while another request increments it, which the race detector sees.)
func inject(s *sim, method string, f types.BaseMethodFault, delayMS int) {
	s.model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName: method, ObjectType: "*", ObjectName: "*", Probability: 1, Enabled: true,
		FaultType: simulator.FaultTypeCustom, Fault: f, Delay: delayMS,
	})
}

// TestPowerPaths: Pause suspends and Resume powers on again; a guest that
// cannot be asked to shut down (no VMware Tools: vCenter's ToolsUnavailable,
// injected) is powered off; a power-on vCenter holds past the task timeout
// is a timeout; a TaskInProgress fault is transient; each on a VM the
// driver created.
func TestPowerPaths(t *testing.T) {
	s := newSim(t, false)
	ctx := context.Background()
	raw, _ := stage(t, s, "site/app/set/disk0.raw", 1<<20)
	spec := driver.Spec{Machine: "app", CPUs: 1, Memory: 256 << 20, Disks: []driver.Disk{{Name: "d", Path: raw}},
		NICs: []driver.NIC{{Name: "prod", Network: simProdNet}}}
	d := newDriver(t, s.opts)
	require.NoError(t, d.Start(ctx, spec))

	require.NoError(t, d.Pause(ctx, spec))
	require.Equal(t, types.VirtualMachinePowerStateSuspended, readVM(t, s, "app").power)
	st, err := d.Status(ctx, spec)
	require.NoError(t, err)
	require.Equal(t, driver.StatusStopped, st)
	require.NoError(t, d.Resume(ctx, spec))
	require.Equal(t, types.VirtualMachinePowerStatePoweredOn, readVM(t, s, "app").power)
	require.NoError(t, d.Pause(ctx, spec))
	spec.CPUs = 2
	require.NoError(t, d.Start(ctx, spec), "Start of a suspended VM resumes it")
	v := readVM(t, s, "app")
	require.Equal(t, types.VirtualMachinePowerStatePoweredOn, v.power)
	require.EqualValues(t, 1, v.cpus, "a suspended VM is resumed as it was, not reconfigured")

	inject(s, "ShutdownGuest", &types.ToolsUnavailable{}, 0)
	var logs bytes.Buffer
	d.Log = slog.New(slog.NewTextHandler(&logs, nil))
	require.NoError(t, d.Stop(ctx, spec))
	require.Contains(t, logs.String(), "guest shutdown refused; powering off", "the guest shutdown was really refused")
	require.Contains(t, logs.String(), "vm=app")
	s.model.Service.ClearFaultRules()
	require.Equal(t, types.VirtualMachinePowerStatePoweredOff, readVM(t, s, "app").power)

	opts := clone(s.opts)
	opts[OptTaskTimeout] = "200ms"
	inject(s, "PowerOnVM_Task", &types.TaskInProgress{}, 2000)
	err = newDriver(t, opts).Start(ctx, spec)
	require.Equal(t, driver.KindTimeout, driver.KindOf(err), "%v", err)
	s.model.Service.ClearFaultRules()

	inject(s, "PowerOnVM_Task", &types.TaskInProgress{}, 0)
	err = d.Start(ctx, spec)
	require.Equal(t, driver.KindTransient, driver.KindOf(err), "%v", err)
	s.model.Service.ClearFaultRules()

	require.NoError(t, d.Start(ctx, spec), "the retry of a transient failure succeeds")
	require.NoError(t, d.Remove(ctx, spec))
}
