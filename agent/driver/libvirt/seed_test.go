package libvirt_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/agent/driver/libvirt"
)

// TestSeedImage: the seed is an ISO9660 image whose volume label is cidata
// (as blkid, which cloud-init uses to find it, reports), trimmed to its
// volume size, with the three NoCloud files under their Rock Ridge names.
func TestSeedImage(t *testing.T) {
	spec := driver.Spec{Machine: "m1", NICs: []driver.NIC{
		{Name: "lan", MAC: "52:54:00:00:00:0a", Address: "192.0.2.10/24", Gateway: "192.0.2.1"},
		{Name: "bmc"}, // no address: not in network-config
		{Name: "v6", MAC: "52:54:00:00:00:0b", Address: "2001:db8::5/64", Gateway: "2001:db8::1"},
	}}
	nc, ok, err := libvirt.SeedFor("m1", spec)
	require.NoError(t, err)
	require.True(t, ok)
	require.Contains(t, nc.NetworkConfig, "version: 2\n")
	require.Contains(t, nc.NetworkConfig, `"192.0.2.10/24"`)
	require.Contains(t, nc.NetworkConfig, `to: "::/0"`)
	require.NotContains(t, nc.NetworkConfig, "nic1")

	p := filepath.Join(t.TempDir(), "seed.iso")
	require.NoError(t, libvirt.WriteSeed(p, nc))
	st, err := os.Stat(p)
	require.NoError(t, err)
	require.Zero(t, st.Size()%2048)
	require.Less(t, st.Size(), int64(1<<20), "trimmed to the volume size")
	got, err := libvirt.ReadSeed(p)
	require.NoError(t, err)
	require.Equal(t, nc, got)
	raw, err := os.ReadFile(p)
	require.NoError(t, err)
	for _, name := range []string{"meta-data", "user-data", "network-config"} {
		require.Contains(t, string(raw), name, "Rock Ridge name %s", name)
	}
	if blkid, err := exec.LookPath("blkid"); err == nil {
		out, err := exec.Command(blkid, "-o", "export", p).Output()
		require.NoError(t, err)
		require.Contains(t, string(out), "TYPE=iso9660")
		require.Contains(t, string(out), "LABEL=cidata")
	}

	_, ok, err = libvirt.SeedFor("m1", driver.Spec{NICs: []driver.NIC{{Name: "lan"}}})
	require.NoError(t, err)
	require.False(t, ok, "no address: no seed")
	for _, bad := range []driver.NIC{{Address: "10.0.0.1"}, {Address: "10.0.0.1/24", Gateway: "gw"}, {Gateway: "10.0.0.1"}} {
		_, _, err := libvirt.SeedFor("m1", driver.Spec{NICs: []driver.NIC{bad}})
		require.Equal(t, driver.KindInvalid, driver.KindOf(err), "%+v", bad)
		require.False(t, strings.Contains(err.Error(), "panic"))
	}
}
