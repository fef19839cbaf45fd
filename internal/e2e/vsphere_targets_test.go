package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/vcsim"
)

// storedTarget is a target as `targets list --json` prints it.
type storedTarget struct {
	Name, Driver string
	Options      map[string]string `json:"options"`
	Networks     map[string]string `json:"networks"`
	TestNetwork  string            `json:"test_network"`
}

// refuseTarget runs `ferry targets add` with args and requires a refusal:
// exit code 1, the API error code wantCode, a message containing each of
// want, and no target stored.
func refuseTarget(t *testing.T, c *Controller, wantCode string, args []string, want ...string) {
	t.Helper()
	r := c.Ferry(append([]string{"--json", "targets", "add"}, args...)...)
	require.Equal(t, 1, r.Code, "targets add %v: accepted or wrong exit: %s %s", args, r.Stdout, r.Stderr)
	var e struct{ Code, Message string }
	require.NoError(t, json.Unmarshal([]byte(r.Stderr), &e), "stderr: %s", r.Stderr)
	require.Equal(t, wantCode, e.Code, "%s", e.Message)
	for _, w := range want {
		require.Contains(t, e.Message, w)
	}
	var ts []storedTarget
	c.JSON(&ts, "targets", "list")
	require.Empty(t, ts, "a refused target is not stored")
}

// TestTargetsAddVSphereValidates: `ferry targets add --driver vsphere` is
// checked through the target agent against vcsim before anything is
// stored. A wrong password is refused as unauthorized (vCenter's
// InvalidLogin), a datastore vCenter does not have as not found, a VMFS
// datastore as invalid with the reason (NFS only), a target directory that
// is not the datastore's mount (a probe file written there is not seen by
// vCenter), a bad duration, an exec command and another driver's option as
// invalid, and so is a disk format other than raw; a good target is
// stored with every option.
func TestTargetsAddVSphereValidates(t *testing.T) {
	vc := vcsim.Start(t, vcsim.Config{VMFS: true})
	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "dr")
	base := []string{"vs", "--agent", "dr", "--dir", vc.Mount}
	flags := func(extra ...string) []string {
		return append(append(append([]string{}, base...), vsphereTargetFlags(vc)...), extra...)
	}

	bad := filepath.Join(t.TempDir(), "wrong.cred")
	require.NoError(t, os.WriteFile(bad, []byte("user="+vcsim.User+"\npassword=wrong\n"), 0o600))
	refuseTarget(t, c, "unauthorized", flags("--credentials-file", bad), "vsphere driver validate: auth", "log in to", "as "+vcsim.User)
	refuseTarget(t, c, "not_found", flags("--datastore", "no-such-ds"), "datastore no-such-ds", "not found")
	refuseTarget(t, c, "invalid", flags("--datastore", vcsim.LocalDS), "datastore "+vcsim.LocalDS+" is VMFS", "needs an NFS datastore")
	refuseTarget(t, c, "not_found", flags("--network", "lan=no-such-pg"), "no-such-pg")
	other := t.TempDir()
	refuseTarget(t, c, "invalid", append([]string{"vs", "--agent", "dr", "--dir", other}, vsphereTargetFlags(vc)...),
		"is not on datastore "+vcsim.NFSName, "the mount is not that datastore")
	refuseTarget(t, c, "invalid", flags("--task-timeout", "soon"), "task-timeout \"soon\"")
	refuseTarget(t, c, "invalid", flags("--start", "true"), "exec driver commands")
	refuseTarget(t, c, "invalid", flags("--format", "vmdk"), "the vsphere driver runs machines on raw disks (through a flat descriptor), not vmdk")
	refuseTarget(t, c, "invalid", flags("--powershell", "pwsh"), "--powershell is not an option of the vsphere driver")

	c.MustFerry(append([]string{"targets", "add"}, flags("--network", "lan="+vcsim.ProdNet, "--test-network", vcsim.TestNet,
		"--folder", "/DC0/vm", "--vm-dir", "dr-vms", "--guest-id", "otherLinux64Guest", "--guest-domain", "dr.example",
		"--shutdown-timeout", "30s", "--task-timeout", "2m", "--mount", vc.Mount)...)...)
	var ts []storedTarget
	c.JSON(&ts, "targets", "list")
	require.Len(t, ts, 1)
	require.Equal(t, "vsphere", ts[0].Driver)
	require.Equal(t, map[string]string{"url": vc.URL, "datacenter": vcsim.Datacenter, "datastore": vcsim.NFSName, "pool": vcsim.Pool,
		"credentials-file": vc.CredFile, "insecure": "true", "folder": "/DC0/vm", "vm-dir": "dr-vms", "guest-id": "otherLinux64Guest",
		"guest-domain": "dr.example", "shutdown-timeout": "30s", "task-timeout": "2m", "mount": vc.Mount}, ts[0].Options)
	require.Equal(t, map[string]string{"lan": vcsim.ProdNet}, ts[0].Networks)
	require.Equal(t, vcsim.TestNet, ts[0].TestNetwork)
}
