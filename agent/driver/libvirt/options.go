package libvirt

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ferrydr/ferry/agent/driver"
)

// Option keys New and Validate read (ferry targets add / protect flags).
const (
	OptURI             = "uri"              // libvirt URI; default qemu:///system
	OptTestNetwork     = "test-network"     // network test domains join; "" = none
	OptNetworks        = "networks"         // comma-separated destination networks to check (Validate)
	OptShutdownTimeout = "shutdown-timeout" // graceful shutdown wait before destroy, e.g. 2m
	OptVirtType        = "virt-type"        // qemu (software emulation, default) or kvm
	OptSeedDir         = "seed-dir"         // where NoCloud seeds go; default the first disk's directory
)

// DefaultURI is the libvirt URI when none is given.
const DefaultURI = "qemu:///system"

// DefaultShutdownTimeout bounds a graceful shutdown before destroy.
const DefaultShutdownTimeout = 2 * time.Minute

// BridgePrefix marks a NIC network that is a host bridge, not a libvirt network.
const BridgePrefix = "bridge:"

// Options is a parsed option map.
type Options struct {
	URI             *url.URL
	TestNetwork     string
	Networks        []string
	ShutdownTimeout time.Duration
	VirtType        string
	SeedDir         string
}

var known = map[string]bool{
	OptURI: true, OptTestNetwork: true, OptNetworks: true,
	OptShutdownTimeout: true, OptVirtType: true, OptSeedDir: true,
}

func invalid(op string, format string, a ...any) error {
	return &driver.Error{Driver: Name, Op: op, Kind: driver.KindInvalid, Err: fmt.Errorf(format, a...)}
}

// ParseOptions checks an option map: unknown keys, the URI's form, durations.
func ParseOptions(opts map[string]string) (Options, error) {
	for k := range opts {
		if !known[k] {
			return Options{}, invalid("options", "unknown libvirt option %q", k)
		}
	}
	o := Options{ShutdownTimeout: DefaultShutdownTimeout, VirtType: "qemu", TestNetwork: opts[OptTestNetwork], SeedDir: opts[OptSeedDir]}
	raw := opts[OptURI]
	if raw == "" {
		raw = DefaultURI
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Options{}, invalid("options", "libvirt uri %q: %w", raw, err)
	}
	scheme, transport, _ := strings.Cut(u.Scheme, "+")
	if scheme != "qemu" {
		return Options{}, invalid("options", "libvirt uri %q: only qemu:// URIs are supported", raw)
	}
	switch transport {
	case "", "unix", "tcp", "tls", "libssh", "libssh2", "ssh":
	default:
		return Options{}, invalid("options", "libvirt uri %q: unknown transport %q", raw, transport)
	}
	if u.Path != "/system" && u.Path != "/session" {
		return Options{}, invalid("options", "libvirt uri %q: path must be /system or /session", raw)
	}
	o.URI = u
	if v := opts[OptShutdownTimeout]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			if s, serr := strconv.Atoi(v); serr == nil && s > 0 {
				d, err = time.Duration(s)*time.Second, nil
			} else {
				return Options{}, invalid("options", "shutdown-timeout %q: want a positive duration such as 90s", v)
			}
		}
		o.ShutdownTimeout = d
	}
	if v := opts[OptVirtType]; v != "" {
		if v != "qemu" && v != "kvm" {
			return Options{}, invalid("options", "virt-type %q: want qemu or kvm", v)
		}
		o.VirtType = v
	}
	for _, n := range strings.Split(opts[OptNetworks], ",") {
		if n = strings.TrimSpace(n); n != "" {
			o.Networks = append(o.Networks, n)
		}
	}
	return o, nil
}
