package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/agent/driver/vsphere"
	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/internal/vcsim"
)

// vsphereHomeVM is a VM of govmomi's VPX model, powered on: the protected
// machine as it runs at its home site (Ferry did not create it).
const vsphereHomeVM = "DC0_H0_VM0"

// TestPlannedFailoverVSphereHome: the home site's driver is vsphere (the
// simulator's own powered-on VM stands for the protected machine; the
// source agent reaches vCenter over HTTPS like a real one). protect has no
// target-only flag (--datastore), refuses another driver's option naming
// it, and refuses a wrong password found through the source agent, as
// machines update does for a changed home driver; a planned failover's
// stop then powers the home VM off (the API reads poweredOff and the home
// driver's status stopped), leaves its hardware as it was, and starts the
// machine at the vsphere target; a revert powers the home VM on again.
func TestPlannedFailoverVSphereHome(t *testing.T) {
	s := newVSphereSite(t)
	img := filepath.Join(testenv.MountLoop(t, "xfs", 1<<30), "vm.img")
	makeImage(t, img, 23, 8<<20)
	before := s.vc.VM(t, vsphereHomeVM)
	require.Equal(t, types.VirtualMachinePowerStatePoweredOn, before.Runtime.PowerState, "precondition")
	home := []string{"--driver", "vsphere", "--url", s.vc.URL, "--credentials-file", s.vc.CredFile, "--insecure",
		"--datacenter", vcsim.Datacenter, "--domain", vsphereHomeVM, "--shutdown-timeout", "5s"}
	protect := func(extra ...string) Result {
		return s.c.Ferry(append(append([]string{"--json", "protect", "vm", "--agent", "src", "--disk", "d=" + img, "--policy", "p",
			"--target", "vs", "--cpus", "1", "--memory", "64MiB", "--nic", "lan"}, home...), extra...)...)
	}
	refused := func(r Result, code string, want string) {
		t.Helper()
		require.Equal(t, 1, r.Code, "protect accepted: %s %s", r.Stdout, r.Stderr)
		var e struct{ Code, Message string }
		require.NoError(t, json.Unmarshal([]byte(r.Stderr), &e), "stderr: %s", r.Stderr)
		require.Equal(t, code, e.Code, "%s", e.Message)
		require.Contains(t, e.Message, want)
		var ms []json.RawMessage
		s.c.JSON(&ms, "machines", "list")
		require.Empty(t, ms, "a refused machine is not stored")
	}
	r := protect("--datastore", vcsim.NFSName)
	require.Equal(t, 2, r.Code, "protect has no target-only flags: %s %s", r.Stdout, r.Stderr)
	require.Contains(t, r.Stderr, "unknown flag: --datastore")
	refused(protect("--powershell", "powershell.exe"), "invalid", "--powershell is not an option of the vsphere driver at the home site")
	bad := filepath.Join(t.TempDir(), "bad.cred")
	require.NoError(t, os.WriteFile(bad, []byte("user="+vcsim.User+"\npassword=wrong\n"), 0o600))
	refused(protect("--credentials-file", bad), "unauthorized", "vsphere driver validate: auth")

	r = protect()
	require.Equal(t, 0, r.Code, "%s %s", r.Stdout, r.Stderr)
	p := s.c.WaitPoint("vm", 0, 2*time.Minute)
	(&Site{Dir: s.dir}).waitStaged(t, "vm", p.ID)

	// machines update re-checks a changed home driver the same way: a
	// switch to hyperv keeping the vsphere options is refused naming one,
	// a wrong password through the source agent; a new shutdown timeout is
	// taken.
	r = s.c.Ferry("--json", "machines", "update", "vm", "--driver", "hyperv")
	require.Equal(t, 1, r.Code, "%s %s", r.Stdout, r.Stderr)
	require.Contains(t, r.Stderr, "is not an option of the hyperv driver at the home site")
	r = s.c.Ferry("--json", "machines", "update", "vm", "--credentials-file", bad)
	require.Equal(t, 1, r.Code, "%s %s", r.Stdout, r.Stderr)
	require.Contains(t, r.Stderr, `"code":"unauthorized"`)
	s.c.MustFerry("machines", "update", "vm", "--shutdown-timeout", "4s")

	j := s.c.runJob(t, 0, "failover", "vm", "--planned")
	after := s.vc.VM(t, vsphereHomeVM)
	require.Equal(t, types.VirtualMachinePowerStatePoweredOff, after.Runtime.PowerState, "the planned failover stopped the home VM")
	require.Equal(t, before.Config.Hardware.NumCPU, after.Config.Hardware.NumCPU, "the home VM's hardware is its own")
	require.Equal(t, before.Config.Hardware.MemoryMB, after.Config.Hardware.MemoryMB)
	require.Equal(t, vcsim.Disks(before), vcsim.Disks(after))
	h, err := vsphere.NewHome(map[string]string{vsphere.OptURL: s.vc.URL, vsphere.OptCredentialsFile: s.vc.CredFile, vsphere.OptInsecure: "true"})
	require.NoError(t, err)
	st, err := h.Status(context.Background(), driver.Spec{Name: vsphereHomeVM, Machine: "vm"})
	require.NoError(t, err)
	require.Equal(t, driver.StatusStopped, st)
	m := s.vc.VM(t, "vm")
	require.NotNil(t, m, "the machine runs at the target")
	require.Equal(t, types.VirtualMachinePowerStatePoweredOn, m.Runtime.PowerState)
	t.Logf("job %s", j.ID)

	// A revert starts the machine at home again through the same driver
	// (a target.driver request to the home agent marked home): the VM is
	// powered on, not created or reconfigured, and the target's is off.
	j = s.c.runJob(t, 0, "revert", "vm")
	require.Equal(t, "succeeded", j.step("start-home"), "job %s", j.ID)
	after = s.vc.VM(t, vsphereHomeVM)
	require.Equal(t, types.VirtualMachinePowerStatePoweredOn, after.Runtime.PowerState, "the revert started the home VM")
	require.Equal(t, before.Config.Hardware.NumCPU, after.Config.Hardware.NumCPU)
	require.Equal(t, vcsim.Disks(before), vcsim.Disks(after))
	require.NotEqual(t, types.VirtualMachinePowerStatePoweredOn, s.vc.VM(t, "vm").Runtime.PowerState, "the target's VM was stopped")
}
