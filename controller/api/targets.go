package api

import "sort"

// Target drivers.
const (
	DriverExec    = "exec"
	DriverLibvirt = "libvirt"
	DriverVSphere = "vsphere"
	DriverHyperV  = "hyperv"
)

// TargetOptionKeys are the option keys each hypervisor driver takes (the
// targets add flags of the same names, CLI.md).
var TargetOptionKeys = map[string][]string{
	DriverExec:    nil,
	DriverLibvirt: {"uri", "shutdown-timeout"},
	DriverVSphere: {"url", "datastore", "datacenter", "pool", "folder", "credentials-file", "insecure", "ca-file",
		"mount", "vm-dir", "guest-id", "guest-domain", "shutdown-timeout", "task-timeout", "scsi-controller", "nic-model"},
	DriverHyperV: {"switch", "powershell", "shutdown-timeout", "powershell-timeout", "secure-boot"},
}

// HomeOptionKeys are the option keys each hypervisor driver takes at a
// machine's home site (protect --driver, machines update --driver), where
// it only powers the existing machine: how to reach the hypervisor and how
// long to wait; the same flag names as targets add.
var HomeOptionKeys = map[string][]string{
	DriverExec:    nil,
	DriverLibvirt: {"uri", "shutdown-timeout"},
	DriverVSphere: {"url", "credentials-file", "datacenter", "insecure", "ca-file", "shutdown-timeout", "task-timeout"},
	DriverHyperV:  {"powershell", "shutdown-timeout", "powershell-timeout"},
}

// HomeRequiredKeys are the home-site options a driver cannot do without
// (the source agent's check would refuse their absence later).
var HomeRequiredKeys = map[string][]string{
	DriverVSphere: {"url", "credentials-file"},
}

// MapsNetworks reports whether the target's driver attaches NICs to
// networks itself (every driver but exec, whose commands do it).
func (t Target) MapsNetworks() bool { return t.Driver != "" && t.Driver != DriverExec }

// UnmappedNetworks are the source networks among nics that the target has
// no --network mapping for, sorted; nil when the driver maps no networks.
func (t Target) UnmappedNetworks(nics []string) []string {
	if !t.MapsNetworks() {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, n := range nics {
		if _, ok := t.Networks[n]; !ok && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// DestinationNetworks are the networks the target maps to, sorted and
// without duplicates (what targets add checks exist).
func (t Target) DestinationNetworks() []string {
	seen := map[string]bool{}
	var out []string
	for _, d := range t.Networks {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}

// DriverOptions are the options the target's driver gets: the target's
// own, plus test-network (every hypervisor driver keeps test machines on it,
// or off every network when it is absent).
func (t Target) DriverOptions() map[string]string {
	out := make(map[string]string, len(t.Options)+1)
	for k, v := range t.Options {
		out[k] = v
	}
	if t.TestNetwork != "" {
		out["test-network"] = t.TestNetwork
	}
	return out
}
