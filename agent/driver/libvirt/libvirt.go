package libvirt

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/ferrydr/ferry/agent/driver"
)

// Name is the driver's name in errors and the catalog.
const Name = "libvirt"

// TestSuffix ends every test domain's name.
const TestSuffix = "-test"

// pollInterval is how often Stop looks at a shutting-down domain.
const pollInterval = 200 * time.Millisecond

// Driver is a libvirt connection's configuration; each operation opens its
// own connection, so a Driver is safe for concurrent use.
type Driver struct {
	opts Options
}

var _ driver.Hypervisor = (*Driver)(nil)

// New checks opts (see the Opt* keys) without connecting.
func New(opts map[string]string) (*Driver, error) {
	o, err := ParseOptions(opts)
	if err != nil {
		return nil, err
	}
	return &Driver{opts: o}, nil
}

// Options returns the parsed options.
func (d *Driver) Options() Options { return d.opts }

// Validate checks opts, connects to libvirtd, and checks that every network in
// OptNetworks exists and that the test network, when given, is isolated.
func Validate(ctx context.Context, opts map[string]string) error {
	d, err := New(opts)
	if err != nil {
		return err
	}
	return d.with(ctx, "validate", func(l *golibvirt.Libvirt) error {
		if _, err := l.ConnectGetLibVersion(); err != nil {
			return err
		}
		for _, n := range d.opts.Networks {
			if strings.HasPrefix(n, BridgePrefix) {
				if strings.TrimPrefix(n, BridgePrefix) == "" {
					return invalid("validate", "network %q: empty bridge name", n)
				}
				continue // a host bridge: libvirt has no API to check it without netcf
			}
			if _, err := l.NetworkLookupByName(n); err != nil {
				return fmt.Errorf("network %q on %s: %w", n, d.opts.URI.Redacted(), err)
			}
		}
		if d.opts.TestNetwork != "" {
			return checkIsolated(l, d.opts.TestNetwork)
		}
		return nil
	})
}

// ErrNotIsolated means a test network forwards to a production network.
var ErrNotIsolated = errors.New("test network is not isolated (it has a <forward> element)")

func checkIsolated(l *golibvirt.Libvirt, name string) error {
	if strings.HasPrefix(name, BridgePrefix) {
		return invalid("validate", "test network %q: must be an isolated libvirt network, not a host bridge", name)
	}
	n, err := l.NetworkLookupByName(name)
	if err != nil {
		return fmt.Errorf("test network %q: %w", name, err)
	}
	x, err := l.NetworkGetXMLDesc(n, 0)
	if err != nil {
		return fmt.Errorf("test network %q: %w", name, err)
	}
	var nx libvirtxml.Network
	if err := nx.Unmarshal(x); err != nil {
		return fmt.Errorf("test network %q: %w", name, err)
	}
	if nx.Forward != nil {
		return invalid("validate", "test network %q: %w", name, ErrNotIsolated)
	}
	return nil
}

// with opens a connection, runs fn, closes it, and classifies fn's error.
// A cancelled ctx disconnects, which fails the pending call.
func (d *Driver) with(ctx context.Context, op string, fn func(*golibvirt.Libvirt) error) error {
	if err := ctx.Err(); err != nil {
		return classify(op, err)
	}
	l, err := connect(ctx, d.opts.URI)
	if err != nil {
		return classify(op, fmt.Errorf("connect %s: %w", d.opts.URI.Redacted(), err))
	}
	stop := context.AfterFunc(ctx, func() { _ = l.Disconnect() })
	err = fn(l)
	if stop() {
		_ = l.Disconnect()
	}
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return classify(op, err)
}

func connect(ctx context.Context, u *url.URL) (*golibvirt.Libvirt, error) {
	type result struct {
		l   *golibvirt.Libvirt
		err error
	}
	ch := make(chan result, 1)
	uu := *u
	go func() {
		l, err := golibvirt.ConnectToURI(&uu)
		ch <- result{l, err}
	}()
	select {
	case r := <-ch:
		return r.l, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.l != nil {
				_ = r.l.Disconnect()
			}
		}()
		return nil, ctx.Err()
	}
}

// domainName is the hypervisor's name for spec's machine: test domains always
// end in TestSuffix so that a test never touches the production domain.
func domainName(spec driver.Spec) (string, error) {
	name := spec.Name
	if name == "" {
		name = spec.Machine
	}
	if name == "" {
		return "", invalid("spec", "machine has no name")
	}
	if strings.ContainsAny(name, "/\x00") {
		return "", invalid("spec", "domain name %q contains '/' or NUL", name)
	}
	if spec.Test && !strings.HasSuffix(name, TestSuffix) {
		name += TestSuffix
	}
	return name, nil
}

// Start defines the domain from spec (updating an existing, stopped
// definition) and powers it on. A running domain is left alone. A spec
// without disks starts an existing definition unchanged (the home site's
// own domain); without disks and without a definition it is invalid.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) error {
	name, err := domainName(spec)
	if err != nil {
		return err
	}
	return d.with(ctx, driver.ActionStart, func(l *golibvirt.Libvirt) error {
		var uuid *golibvirt.UUID // of an existing definition: a redefinition keeps it
		dom, err := l.DomainLookupByName(name)
		if err == nil {
			uuid = &dom.UUID
			if live, err := keepLive(l, dom); live || err != nil {
				return err
			}
			if len(spec.Disks) == 0 {
				// No disks: start the definition as it is (a home site's
				// own domain, which Ferry did not define).
				if err := l.DomainCreate(dom); err != nil {
					return fmt.Errorf("start domain %s: %w", name, err)
				}
				return nil
			}
		} else if !golibvirt.IsNotFound(err) {
			return err
		}
		if spec.Test && d.opts.TestNetwork != "" {
			if err := checkIsolated(l, d.opts.TestNetwork); err != nil {
				return err
			}
		}
		seed, err := d.writeSeed(name, spec)
		if err != nil {
			return err
		}
		x, err := d.DomainXML(name, spec, seed)
		if err != nil {
			return err
		}
		if uuid != nil {
			// libvirt refuses a definition of an existing name under
			// another UUID, and one without a UUID gets a new one.
			if x, err = withUUID(x, *uuid); err != nil {
				return err
			}
		}
		dom, err = l.DomainDefineXML(x)
		if err != nil {
			return fmt.Errorf("define domain %s: %w", name, err)
		}
		if err := l.DomainCreate(dom); err != nil {
			return fmt.Errorf("start domain %s: %w", name, err)
		}
		return nil
	})
}

// Stop asks the guest to shut down (ACPI), waits up to the shutdown timeout,
// then destroys (powers off) the domain. A stopped domain is left alone.
func (d *Driver) Stop(ctx context.Context, spec driver.Spec) error {
	name, err := domainName(spec)
	if err != nil {
		return err
	}
	return d.with(ctx, driver.ActionStop, func(l *golibvirt.Libvirt) error {
		dom, err := l.DomainLookupByName(name)
		if err != nil {
			return err
		}
		off, err := isOff(l, dom)
		if err != nil || off {
			return err
		}
		if err := l.DomainShutdown(dom); err != nil && !isOffErr(err) {
			return fmt.Errorf("shutdown domain %s: %w", name, err)
		}
		deadline := time.NewTimer(d.opts.ShutdownTimeout)
		defer deadline.Stop()
		tick := time.NewTicker(pollInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-deadline.C:
				if err := l.DomainDestroy(dom); err != nil && !isOffErr(err) {
					return fmt.Errorf("destroy domain %s after %s: %w", name, d.opts.ShutdownTimeout, err)
				}
				return nil
			case <-tick.C:
				off, err := isOff(l, dom)
				if err != nil || off {
					return err
				}
			}
		}
	})
}

// Pause suspends a running domain's vCPUs.
func (d *Driver) Pause(ctx context.Context, spec driver.Spec) error {
	return d.onState(ctx, driver.ActionPause, spec, func(l *golibvirt.Libvirt, dom golibvirt.Domain, st golibvirt.DomainState) error {
		switch st {
		case golibvirt.DomainPaused:
			return nil
		case golibvirt.DomainRunning, golibvirt.DomainBlocked:
			return l.DomainSuspend(dom)
		}
		return invalid(driver.ActionPause, "domain %s is not running (state %d)", dom.Name, st)
	})
}

// Resume thaws a paused domain.
func (d *Driver) Resume(ctx context.Context, spec driver.Spec) error {
	return d.onState(ctx, driver.ActionResume, spec, func(l *golibvirt.Libvirt, dom golibvirt.Domain, st golibvirt.DomainState) error {
		switch st {
		case golibvirt.DomainRunning, golibvirt.DomainBlocked:
			return nil
		case golibvirt.DomainPaused:
			return l.DomainResume(dom)
		}
		return invalid(driver.ActionResume, "domain %s is not paused (state %d)", dom.Name, st)
	})
}

func (d *Driver) onState(ctx context.Context, op string, spec driver.Spec, fn func(*golibvirt.Libvirt, golibvirt.Domain, golibvirt.DomainState) error) error {
	name, err := domainName(spec)
	if err != nil {
		return err
	}
	return d.with(ctx, op, func(l *golibvirt.Libvirt) error {
		dom, err := l.DomainLookupByName(name)
		if err != nil {
			return err
		}
		st, _, err := l.DomainGetState(dom, 0)
		if err != nil {
			return err
		}
		return fn(l, dom, golibvirt.DomainState(st))
	})
}

// Status reports running (running, blocked or paused: the domain holds its
// disks), stopped (defined, not running) or absent.
func (d *Driver) Status(ctx context.Context, spec driver.Spec) (string, error) {
	name, err := domainName(spec)
	if err != nil {
		return "", err
	}
	status := driver.StatusAbsent
	err = d.with(ctx, driver.ActionStatus, func(l *golibvirt.Libvirt) error {
		dom, err := l.DomainLookupByName(name)
		if golibvirt.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		off, err := isOff(l, dom)
		if err != nil {
			return err
		}
		status = driver.StatusRunning
		if off {
			status = driver.StatusStopped
		}
		return nil
	})
	return status, err
}

// Remove destroys the domain if it runs, undefines it (with its NVRAM and
// managed save image) and deletes the NoCloud seed Start wrote. It never
// deletes the disks.
func (d *Driver) Remove(ctx context.Context, spec driver.Spec) error {
	name, err := domainName(spec)
	if err != nil {
		return err
	}
	return d.with(ctx, "remove", func(l *golibvirt.Libvirt) error {
		dom, err := l.DomainLookupByName(name)
		switch {
		case golibvirt.IsNotFound(err):
		case err != nil:
			return err
		default:
			off, err := isOff(l, dom)
			if err != nil {
				return err
			}
			if !off {
				if err := l.DomainDestroy(dom); err != nil && !isOffErr(err) {
					return fmt.Errorf("destroy domain %s: %w", name, err)
				}
			}
			err = l.DomainUndefineFlags(dom, golibvirt.DomainUndefineManagedSave|golibvirt.DomainUndefineNvram)
			if err != nil && !golibvirt.IsNotFound(err) {
				return fmt.Errorf("undefine domain %s: %w", name, err)
			}
		}
		if p := d.seedPath(name, spec); p != "" {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove seed: %w", err)
			}
		}
		return nil
	})
}

func isOff(l *golibvirt.Libvirt, dom golibvirt.Domain) (bool, error) {
	st, _, err := l.DomainGetState(dom, 0)
	if err != nil {
		return false, err
	}
	switch golibvirt.DomainState(st) {
	case golibvirt.DomainShutoff, golibvirt.DomainCrashed, golibvirt.DomainNostate:
		return true, nil
	}
	return false, nil
}

// isOffErr is libvirt's "domain is not running" answer to shutdown/destroy of
// a domain that stopped meanwhile.
func isOffErr(err error) bool {
	var le golibvirt.Error
	return errors.As(err, &le) && golibvirt.ErrorNumber(le.Code) == golibvirt.ErrOperationInvalid
}

// macFor is the MAC a NIC gets: the source's unless NewMACs (or none was
// captured), else a stable locally administered one in QEMU's 52:54:00 range
// derived from the domain and NIC names, so redefinitions keep it.
func macFor(domain string, i int, n driver.NIC, newMACs bool) string {
	if n.MAC != "" && !newMACs {
		return strings.ToLower(n.MAC)
	}
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d\x00%s", domain, i, n.Name))
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", h[0], h[1], h[2])
}

// classify wraps err as a *driver.Error with its kind.
func classify(op string, err error) error { return driver.Classify(Name, op, err, kindOf) }

func kindOf(err error) driver.ErrorKind {
	if k, ok := driver.ConnKind(err); ok {
		return k
	}
	var le golibvirt.Error
	if errors.As(err, &le) {
		switch golibvirt.ErrorNumber(le.Code) {
		case golibvirt.ErrNoDomain, golibvirt.ErrNoNetwork, golibvirt.ErrNoStoragePool, golibvirt.ErrNoStorageVol:
			return driver.KindNotFound
		case golibvirt.ErrAuthFailed, golibvirt.ErrAuthCancelled, golibvirt.ErrAuthUnavailable,
			golibvirt.ErrAccessDenied, golibvirt.ErrOperationDenied:
			return driver.KindAuth
		case golibvirt.ErrOperationTimeout, golibvirt.ErrAgentUnresponsive, golibvirt.ErrAgentCommandTimeout:
			return driver.KindTimeout
		case golibvirt.ErrRPC, golibvirt.ErrNoConnect, golibvirt.ErrResourceBusy, golibvirt.ErrNoServer, golibvirt.ErrNoClient:
			return driver.KindTransient
		case golibvirt.ErrXMLError, golibvirt.ErrXMLDetail, golibvirt.ErrInvalidArg, golibvirt.ErrConfigUnsupported,
			golibvirt.ErrNoSupport, golibvirt.ErrOperationUnsupported, golibvirt.ErrInvalidMac, golibvirt.ErrXMLInvalidSchema:
			return driver.KindInvalid
		}
	}
	return driver.KindUnknown
}
