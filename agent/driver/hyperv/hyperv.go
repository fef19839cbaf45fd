package hyperv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ferrydr/ferry/agent/driver"
)

// Option keys (ferry targets add --driver hyperv --switch … ).
const (
	OptSwitch      = "switch"             // default virtual switch for NICs the network map leaves without one
	OptTestNetwork = "test-network"       // the switch a test failover's NICs join (targets add --test-network); "" = not connected
	OptPowerShell  = "powershell"         // powershell.exe path or name on PATH
	OptStopTimeout = "shutdown-timeout"   // guest shutdown wait before Stop-VM -TurnOff (Go duration); the libvirt and vsphere key too
	OptTimeout     = "powershell-timeout" // bound on one PowerShell run (Go duration)
	OptSecureBoot  = "secure-boot"        // "on" keeps Hyper-V's Secure Boot on Generation 2 machines; default off
	OptNetworks    = "networks"           // comma-separated switches the target's network map names (checked by Validate)
)

// Defaults.
const (
	DefaultPowerShell  = "powershell.exe"
	DefaultStopTimeout = 2 * time.Minute
	DefaultTimeout     = driver.DefaultTimeout
)

// memoryAlign: Hyper-V wants startup memory in whole 2 MiB units.
const memoryAlign = 2 << 20

// minMemory is Hyper-V's smallest startup memory (32 MiB).
const minMemory = 32 << 20

// Driver drives Hyper-V on this Windows host through powershell.exe.
type Driver struct {
	powershell  string
	sw          string
	testSwitch  string
	stopTimeout time.Duration
	timeout     time.Duration
	secureBoot  bool
	networks    []string
	log         *slog.Logger
}

var _ driver.Hypervisor = (*Driver)(nil)

// New checks opts and makes a driver. It does not run anything: Validate
// does.
func New(opts map[string]string) (*Driver, error) {
	d := &Driver{powershell: DefaultPowerShell, stopTimeout: DefaultStopTimeout, timeout: DefaultTimeout,
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := opts[k]
		var err error
		switch k {
		case OptSwitch:
			d.sw = v
		case OptTestNetwork:
			d.testSwitch = v
		case OptPowerShell:
			if v == "" {
				err = errors.New("empty")
			}
			d.powershell = v
		case OptStopTimeout:
			d.stopTimeout, err = positiveDuration(v)
		case OptTimeout:
			d.timeout, err = positiveDuration(v)
		case OptSecureBoot:
			switch v {
			case "on":
				d.secureBoot = true
			case "off", "":
			default:
				err = errors.New("want on or off")
			}
		case OptNetworks:
			for _, n := range strings.Split(v, ",") {
				if n = strings.TrimSpace(n); n != "" {
					d.networks = append(d.networks, n)
				}
			}
		default:
			err = fmt.Errorf("unknown option (known: %s)", strings.Join([]string{OptNetworks, OptPowerShell, OptSecureBoot, OptStopTimeout, OptSwitch, OptTestNetwork, OptTimeout}, ", "))
		}
		if err != nil {
			return nil, invalid("options", "%s=%q: %w", k, v, err)
		}
	}
	if d.sw != "" && d.sw == d.testSwitch {
		return nil, invalid("options", "%s and %s are both %q: a test failover must not join the production switch", OptSwitch, OptTestNetwork, d.sw)
	}
	return d, nil
}

func positiveDuration(v string) (time.Duration, error) {
	t, err := time.ParseDuration(v)
	if err != nil {
		return 0, err
	}
	if t <= 0 {
		return 0, errors.New("must be positive")
	}
	return t, nil
}

// WithLogger sets the driver's logger.
func (d *Driver) WithLogger(l *slog.Logger) *Driver {
	d.log = l.With("driver", driverName)
	return d
}

// Validate checks opts and the host up front (for targets add): that
// powershell.exe is there, that the Hyper-V module loads and answers
// (Get-VMHost: access is checked here), and that the configured switches
// and the ones the network map names (OptNetworks) exist.
func Validate(ctx context.Context, opts map[string]string) error {
	d, err := New(opts)
	if err != nil {
		return err
	}
	return d.Validate(ctx)
}

// Validate is the package Validate for a made driver.
func (d *Driver) Validate(ctx context.Context) error {
	if _, err := exec.LookPath(d.powershell); err != nil {
		return classified("validate", driver.KindInvalid, fmt.Errorf("%s: %w (the hyperv driver runs on the Windows Hyper-V host)", d.powershell, err))
	}
	r, err := d.run(ctx, "validate", opProbe, params{}, 0)
	if err != nil {
		return err
	}
	check := []struct{ opt, name string }{{OptSwitch, d.sw}, {OptTestNetwork, d.testSwitch}}
	for _, n := range d.networks {
		check = append(check, struct{ opt, name string }{OptNetworks, n})
	}
	for _, s := range check {
		if s.name != "" && !slices.ContainsFunc(r.Switches, func(x string) bool { return strings.EqualFold(x, s.name) }) {
			return classified("validate", driver.KindNotFound, fmt.Errorf("%s %q: no such virtual switch on this host (it has: %s)", s.opt, s.name, strings.Join(r.Switches, ", ")))
		}
	}
	return nil
}
