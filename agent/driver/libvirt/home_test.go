//go:build linux

package libvirt_test

import (
	"context"
	"testing"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/agent/driver/libvirt"
	"github.com/ferrydr/ferry/internal/libvirtd"
)

// TestLibvirtHome: the home-site driver powers the domain defined there and
// changes nothing else, on a real libvirtd + qemu (TCG). Stop destroys the
// guest after the shutdown timeout (it runs no OS, so ACPI is ignored);
// Start starts the definition as it is, though the spec carries other
// disks and CPUs; Pause and Resume freeze and thaw it; Start of a domain
// that is not defined is not found and defines nothing; Remove is refused
// and the domain stays defined. A former target's options (test-network,
// virt-type) are ignored at home; the home check refuses them.
func TestLibvirtHome(t *testing.T) {
	d := libvirtd.Start(t)
	l := d.Connect(t)
	ctx := context.Background()
	dir := t.TempDir()
	disk := rawDisk(t, dir, "home.raw")
	own := newDriver(t, d, nil)
	require.NoError(t, own.Start(ctx, driver.Spec{Name: "home-db", Memory: 64 << 20, CPUs: 1,
		Disks: []driver.Disk{{Name: "d", Path: disk, Format: "raw"}}}), "the home site's own domain")

	h, err := libvirt.NewHome(map[string]string{libvirt.OptURI: d.URI, libvirt.OptShutdownTimeout: "1s",
		libvirt.OptTestNetwork: "isolated", libvirt.OptVirtType: "kvm"})
	require.NoError(t, err)
	other := rawDisk(t, dir, "other.raw")
	spec := driver.Spec{Name: "home-db", Machine: "db", CPUs: 4, Memory: 128 << 20,
		Disks: []driver.Disk{{Name: "d", Path: other, Format: "raw"}}}

	require.NoError(t, h.Stop(ctx, spec))
	require.Equal(t, golibvirt.DomainShutoff, state(t, l, "home-db"))
	st, err := h.Status(ctx, spec)
	require.NoError(t, err)
	require.Equal(t, driver.StatusStopped, st)

	require.NoError(t, h.Start(ctx, spec))
	require.Equal(t, golibvirt.DomainRunning, state(t, l, "home-db"))
	dx := domainXML(t, l, "home-db")
	require.Equal(t, []string{disk}, diskSources(dx, "disk"), "the definition's own disk")
	require.Equal(t, uint(1), dx.VCPU.Value)
	require.NoError(t, h.Start(ctx, spec), "start of a running domain")

	require.NoError(t, h.Pause(ctx, spec))
	require.Equal(t, golibvirt.DomainPaused, state(t, l, "home-db"))
	require.NoError(t, h.Start(ctx, spec), "start resumes a paused domain")
	require.Equal(t, golibvirt.DomainRunning, state(t, l, "home-db"))

	err = h.Remove(ctx, spec)
	require.Equal(t, driver.KindInvalid, driver.KindOf(err), "%v", err)
	require.Equal(t, golibvirt.DomainRunning, state(t, l, "home-db"), "remove did nothing")

	absent := spec
	absent.Name = "no-such-domain"
	err = h.Start(ctx, absent)
	require.Equal(t, driver.KindNotFound, driver.KindOf(err), "%v", err)
	_, err = l.DomainLookupByName("no-such-domain")
	require.True(t, golibvirt.IsNotFound(err), "nothing was defined: %v", err)

	require.NoError(t, libvirt.ValidateHome(ctx, map[string]string{libvirt.OptURI: d.URI}))
	err = libvirt.ValidateHome(ctx, map[string]string{libvirt.OptURI: d.URI, libvirt.OptTestNetwork: "isolated"})
	require.Equal(t, driver.KindInvalid, driver.KindOf(err), "%v", err)
	require.ErrorContains(t, err, "test-network is not an option of the libvirt driver at the home site")
	require.NoError(t, own.Stop(ctx, spec))
}
