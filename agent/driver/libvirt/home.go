package libvirt

import (
	"context"
	"fmt"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/ferrydr/ferry/agent/driver"
)

// HomeOptions are the options the driver takes at a machine's home site,
// where it only powers the domain already defined there.
var HomeOptions = []string{OptURI, OptShutdownTimeout}

// NewHome makes the driver of a machine's home site: Start starts (or
// resumes) the domain defined there and never defines one; Stop is ACPI
// shutdown then destroy after shutdown-timeout; Pause and Resume suspend
// and resume its vCPUs; Remove is refused.
func NewHome(opts map[string]string) (driver.Hypervisor, error) {
	d, err := New(driver.HomeOptions(opts, HomeOptions, []string{OptTestNetwork, OptNetworks, OptVirtType, OptSeedDir}))
	if err != nil {
		return nil, err
	}
	return driver.Home{Driver: Name, D: d}, nil
}

// ValidateHome checks a home site's options and connects to libvirtd.
func ValidateHome(ctx context.Context, opts map[string]string) error {
	if err := driver.CheckHomeOptions(Name, opts, HomeOptions); err != nil {
		return err
	}
	return Validate(ctx, opts)
}

// PowerOn starts the defined domain as it is (a paused one resumes; a
// running one is left). No such domain is KindNotFound.
func (d *Driver) PowerOn(ctx context.Context, spec driver.Spec) error {
	name, err := domainName(spec)
	if err != nil {
		return err
	}
	return d.with(ctx, driver.ActionStart, func(l *golibvirt.Libvirt) error {
		dom, err := l.DomainLookupByName(name)
		if err != nil {
			return fmt.Errorf("domain %s: %w", name, err)
		}
		if live, err := keepLive(l, dom); live || err != nil {
			return err
		}
		if err := l.DomainCreate(dom); err != nil {
			return fmt.Errorf("start domain %s: %w", name, err)
		}
		return nil
	})
}

// keepLive leaves a running domain as it is and resumes a paused one,
// reporting true for either: a start has nothing more to do.
func keepLive(l *golibvirt.Libvirt, dom golibvirt.Domain) (bool, error) {
	st, _, err := l.DomainGetState(dom, 0)
	if err != nil {
		return false, err
	}
	switch golibvirt.DomainState(st) {
	case golibvirt.DomainRunning, golibvirt.DomainBlocked:
		return true, nil
	case golibvirt.DomainPaused:
		return true, l.DomainResume(dom)
	}
	return false, nil
}
