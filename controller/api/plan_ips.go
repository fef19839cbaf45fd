package api

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Re-IP on a plan: a plan may give a member its own per-NIC addresses
// (`ferry plans add-machine … --ip`, `ips:` in plan YAML). At a failover or
// test failover of the plan they override, NIC by NIC, the addresses the
// machine got at protect (--ip); a NIC the plan does not name keeps the
// machine's own.

// String is the address as --ip takes it: NIC=ADDR/PREFIX[,GATEWAY].
func (a NICAddress) String() string {
	s := a.NIC + "=" + a.Address
	if a.Gateway != "" {
		s += "," + a.Gateway
	}
	return s
}

// FormatNICAddresses is a list of addresses in --ip form, space separated.
func FormatNICAddresses(ips []NICAddress) string {
	var parts []string
	for _, ip := range ips {
		parts = append(parts, ip.String())
	}
	return strings.Join(parts, " ")
}

// CheckNICAddresses checks re-IP addresses against a machine's NICs: each
// names one of them, at most once, with an ADDR/PREFIX address and an
// optional gateway address. The error names the first bad entry.
func CheckNICAddresses(nics []string, ips []NICAddress) error {
	seen := map[string]bool{}
	for _, ip := range ips {
		if !slices.Contains(nics, ip.NIC) {
			return fmt.Errorf("--ip %s: the machine has no --nic %s", ip.NIC, ip.NIC)
		}
		if seen[ip.NIC] {
			return fmt.Errorf("--ip %s given twice", ip.NIC)
		}
		seen[ip.NIC] = true
		if err := ip.Check(); err != nil {
			return err
		}
	}
	return nil
}

// Check checks the address's form alone: ADDR/PREFIX and an optional
// gateway address.
func (a NICAddress) Check() error {
	if a.NIC == "" {
		return fmt.Errorf("--ip %q: want NIC=ADDR/PREFIX[,GATEWAY]", a.String())
	}
	if _, err := netip.ParsePrefix(a.Address); err != nil {
		return fmt.Errorf("--ip %s=%s: want ADDR/PREFIX: %v", a.NIC, a.Address, err)
	}
	if a.Gateway != "" {
		if _, err := netip.ParseAddr(a.Gateway); err != nil {
			return fmt.Errorf("--ip %s gateway %q: %v", a.NIC, a.Gateway, err)
		}
	}
	return nil
}

// OverrideIPs is the re-IP a machine gets in a plan: for each NIC the
// plan names, the plan's address (in place of the machine's own, or after
// them when the machine had none for that NIC); the machine's own
// (protect --ip) for the others.
func OverrideIPs(own, plan []NICAddress) []NICAddress {
	if len(plan) == 0 {
		return own
	}
	out := slices.Clone(own)
	for _, p := range plan {
		if i := slices.IndexFunc(out, func(o NICAddress) bool { return o.NIC == p.NIC }); i >= 0 {
			out[i] = p
		} else {
			out = append(out, p)
		}
	}
	return out
}

// IPsOf is the plan's re-IP of a member (nil: none; the machine's own apply).
func (g PlanGroup) IPsOf(machine string) []NICAddress {
	return g.IPs[machine]
}
