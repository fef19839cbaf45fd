package main

import (
	"slices"

	"github.com/spf13/pflag"

	"github.com/ferrydr/ferry/controller/api"
)

// driverOptionFlags are the hypervisor drivers' options as flags, one
// definition for targets add (all of them) and for protect and machines
// update (the home site's, api.HomeOptionKeys). insecure is a bool flag of
// its own.
var driverOptionFlags = []struct{ name, usage string }{
	{"uri", "libvirt: libvirt URI (default qemu:///system)"},
	{"shutdown-timeout", "libvirt, vsphere, hyperv: how long a stop waits for the guest to shut down before powering it off (default 2m; vsphere 3m)"},
	{"url", "vsphere: vCenter or ESXi URL"},
	{"datastore", "vsphere: the NFS datastore holding the target directory"},
	{"datacenter", "vsphere: datacenter (default: the only one)"},
	{"pool", "vsphere: resource pool (default: the cluster's)"},
	{"folder", "vsphere: VM folder (default: the datacenter's VM folder)"},
	{"credentials-file", "vsphere: file on the agent's host with the user and password (mode 600)"},
	{"mount", "vsphere: where the datastore's root is mounted on the agent's host (default: the target directory)"},
	{"ca-file", "vsphere: PEM file of the CA that signs vCenter's certificate"},
	{"vm-dir", "vsphere: datastore directory for the VMs' own files (default ferry-vms)"},
	{"guest-id", "vsphere: guest OS identifier of new VMs (default otherGuest64)"},
	{"guest-domain", "vsphere: DNS domain of Linux guest customization at re-IP (default localdomain)"},
	{"task-timeout", "vsphere: bound on each vSphere task (default 10m)"},
	{"scsi-controller", "vsphere: SCSI controller of new VMs: lsilogic-sas (default), pvscsi or lsilogic"},
	{"nic-model", "vsphere: NIC model of new NICs: e1000e (default), vmxnet3 or e1000"},
	{"switch", "hyperv: virtual switch for NICs without a --network mapping"},
	{"powershell", "hyperv: path or PATH name of Windows PowerShell on the agent's host (default powershell.exe)"},
	{"powershell-timeout", "hyperv: bound on any one PowerShell run (default 5m)"},
	{"secure-boot", "hyperv: on keeps Secure Boot on Generation 2 (uefi) machines, off turns it off (default off)"},
}

const insecureUsage = "vsphere: do not verify the server certificate"

// addDriverOptionFlags defines the option flags of which (nil: all) on f
// and returns them by name.
func addDriverOptionFlags(f *pflag.FlagSet, which func(string) bool) map[string]*string {
	out := map[string]*string{}
	for _, o := range driverOptionFlags {
		if which == nil || which(o.name) {
			out[o.name] = f.String(o.name, "", o.usage)
		}
	}
	return out
}

// isHomeOption reports whether some driver takes the option at a
// machine's home site.
func isHomeOption(name string) bool {
	for _, keys := range api.HomeOptionKeys {
		if slices.Contains(keys, name) {
			return true
		}
	}
	return false
}

// homeDriverFlags are the home site's driver option flags of protect and
// machines update (--uri, --url, --credentials-file, …, --insecure).
type homeDriverFlags struct {
	opts     map[string]*string
	insecure bool
}

func (h *homeDriverFlags) add(f *pflag.FlagSet) {
	h.opts = addDriverOptionFlags(f, isHomeOption)
	f.BoolVar(&h.insecure, "insecure", false, insecureUsage)
}

// options are the flags given (changed), by option name; a flag given
// empty (and --insecure=false) is "" when keepEmpty (machines update: it
// clears the option), left out otherwise. nil when none.
func (h *homeDriverFlags) options(changed func(string) bool, keepEmpty bool) map[string]string {
	out := map[string]string{}
	for k, v := range h.opts {
		if changed(k) && (*v != "" || keepEmpty) {
			out[k] = *v
		}
	}
	if changed("insecure") {
		switch {
		case h.insecure:
			out["insecure"] = "true"
		case keepEmpty:
			out["insecure"] = ""
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
