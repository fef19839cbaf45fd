package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/libvirtd"
)

// TestTargetsAddLibvirtValidates: `ferry targets add --driver libvirt` is
// checked through the target agent against a real (private) libvirtd before
// anything is stored: a good target with a network map and an isolated test
// network is stored with its options; an unreachable URI, a network that
// does not exist, a test network that forwards, a bad URI, exec commands on
// a libvirt target, network flags on an exec target and a driver this agent
// was built without are each refused with the reason, and nothing is stored.
// A machine whose NIC network the target does not map cannot be protected to it.
func TestTargetsAddLibvirtValidates(t *testing.T) {
	d := libvirtd.Start(t)
	d.DefineIsolatedNetwork(t, "dr-lan", "fdrlan0")
	d.DefineIsolatedNetwork(t, "dr-iso", "fdriso0")
	l := d.Connect(t)
	_, err := l.NetworkDefineXML("<network><name>dr-nat</name><forward mode='nat'/><bridge name='fdrnat0'/><ip address='192.0.2.1' netmask='255.255.255.0'/></network>")
	require.NoError(t, err)

	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "dr")
	dir := t.TempDir()
	base := []string{"targets", "add", "kvm", "--agent", "dr", "--dir", dir, "--driver", "libvirt"}
	refused := func(why string, want string, args ...string) {
		t.Helper()
		r := c.Ferry(append(append([]string{}, base...), args...)...)
		require.NotEqual(t, 0, r.Code, "%s: accepted: %s", why, r.Stdout)
		require.Contains(t, r.Stderr, want, "%s", why)
	}
	missing := "qemu:///system?socket=" + filepath.Join(t.TempDir(), "no-sock")
	refused("unreachable libvirtd", "transient", "--uri", missing)
	refused("missing network", "dr-missing", "--uri", d.URI, "--network", "lan=dr-missing")
	refused("test network that forwards", "not isolated", "--uri", d.URI, "--test-network", "dr-nat")
	refused("bad uri", "only qemu:// URIs", "--uri", "xen:///system")
	refused("exec command on libvirt", "exec driver commands", "--uri", d.URI, "--start", "true")
	refused("vsphere option on libvirt", "--datastore is not an option of the libvirt driver", "--uri", d.URI, "--datastore", "ds1")
	r := c.Ferry("targets", "add", "esx", "--agent", "dr", "--dir", dir, "--driver", "vsphere", "--url", "https://vc.invalid/sdk", "--datastore", "nfs1")
	require.NotEqual(t, 0, r.Code)
	require.Contains(t, r.Stderr, "driver not built")
	r = c.Ferry("targets", "add", "ex", "--agent", "dr", "--dir", dir, "--start", "true", "--network", "lan=x")
	require.NotEqual(t, 0, r.Code)
	require.Contains(t, r.Stderr, "exec driver does not attach networks")
	var ts []map[string]any
	c.JSON(&ts, "targets", "list")
	require.Empty(t, ts, "a refused target is not stored")

	c.MustFerry(append(base, "--uri", d.URI, "--network", "lan=dr-lan", "--network", "dmz=bridge:br-dmz", "--test-network", "dr-iso", "--new-macs")...)
	var got []struct {
		Name, Driver string
		Options      map[string]string `json:"options"`
		Networks     map[string]string `json:"networks"`
		TestNetwork  string            `json:"test_network"`
		NewMACs      bool              `json:"new_macs"`
	}
	c.JSON(&got, "targets", "list")
	require.Len(t, got, 1)
	require.Equal(t, "libvirt", got[0].Driver)
	require.Equal(t, map[string]string{"uri": d.URI}, got[0].Options)
	require.Equal(t, map[string]string{"lan": "dr-lan", "dmz": "bridge:br-dmz"}, got[0].Networks)
	require.Equal(t, "dr-iso", got[0].TestNetwork)
	require.True(t, got[0].NewMACs)

	src := EnrollAgent(t, c, c.Addr, "src")
	_ = src
	img := filepath.Join(t.TempDir(), "vm.raw")
	require.NoError(t, os.WriteFile(img, make([]byte, 1<<20), 0o600))
	r = c.Ferry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--target", "kvm", "--nic", "lan", "--nic", "backup")
	require.NotEqual(t, 0, r.Code, "protect to a target that does not map network backup: %s", r.Stdout)
	require.True(t, strings.Contains(r.Stderr, "backup") && strings.Contains(r.Stderr, "no mapping"), r.Stderr)
	c.MustFerry("protect", "vm", "--agent", "src", "--disk", "d="+img, "--target", "kvm", "--nic", "lan", "--nic", "dmz")
}
