package controller

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

func requireInvalid(t *testing.T, err error, why string) {
	t.Helper()
	var ae *api.Error
	require.True(t, errors.As(err, &ae), "%s: %v", why, err)
	require.Equal(t, api.CodeInvalid, ae.Code, "%s: %v", why, err)
}

// TestCheckTargetDriver: options belong to their driver, exec commands to
// exec, network flags to hypervisor drivers; vsphere needs url and datastore.
func TestCheckTargetDriver(t *testing.T) {
	ok := []api.Target{
		{Driver: "exec", Format: "raw", Exec: api.Driver{Start: "x"}},
		{Driver: "libvirt", Format: "qcow2", Options: map[string]string{"uri": "qemu:///system"}, Networks: map[string]string{"lan": "default"}, TestNetwork: "iso", NewMACs: true},
		{Driver: "vsphere", Format: "raw", Options: map[string]string{"url": "https://vc/sdk", "datastore": "nfs1", "insecure": "true"}},
		{Driver: "hyperv", Format: "vhdx", Options: map[string]string{"switch": "LAN"}},
		{Driver: "hyperv", Format: "vhdx", Options: map[string]string{"powershell": "C:\\ps.exe", "shutdown-timeout": "1m", "powershell-timeout": "2m", "secure-boot": "on"}},
		{Driver: "vsphere", Format: "raw", Options: map[string]string{"url": "u", "datastore": "d", "scsi-controller": "pvscsi", "nic-model": "vmxnet3", "task-timeout": "1m", "mount": "/m"}},
	}
	for _, tg := range ok {
		require.NoError(t, checkTargetDriver(&tg), "%+v", tg)
	}
	bad := map[string]api.Target{
		"unknown driver":      {Driver: "qemu", Format: "raw"},
		"exec without start":  {Driver: "exec", Format: "raw"},
		"exec with a network": {Driver: "exec", Format: "raw", Exec: api.Driver{Start: "x"}, Networks: map[string]string{"a": "b"}},
		"libvirt with start":  {Driver: "libvirt", Format: "raw", Exec: api.Driver{Start: "x"}},
		"libvirt with url":    {Driver: "libvirt", Format: "raw", Options: map[string]string{"url": "x"}},
		"libvirt on vmdk":     {Driver: "libvirt", Format: "vmdk"},
		"vsphere without ds":  {Driver: "vsphere", Format: "raw", Options: map[string]string{"url": "x"}},
		"empty network name":  {Driver: "libvirt", Format: "raw", Networks: map[string]string{"lan": ""}},
		"hyperv with uri":     {Driver: "hyperv", Format: "vhdx", Options: map[string]string{"uri": "x"}},
		"hyperv on raw":       {Driver: "hyperv", Format: "raw"},
		"vsphere on vmdk":     {Driver: "vsphere", Format: "vmdk", Options: map[string]string{"url": "u", "datastore": "d"}},
		"vsphere powershell":  {Driver: "vsphere", Format: "raw", Options: map[string]string{"url": "u", "datastore": "d", "powershell": "x"}},
	}
	for why, tg := range bad {
		requireInvalid(t, checkTargetDriver(&tg), why)
	}
}

// TestCheckProtectHardware: firmware, --ip of a known NIC with a valid
// address and gateway, and a source driver with its own options only.
func TestCheckProtectHardware(t *testing.T) {
	good := api.ProtectRequest{NICs: []string{"lan"}, Firmware: "uefi", SourceDriver: "libvirt",
		SourceOptions: map[string]string{"uri": "qemu:///system"},
		IPs:           []api.NICAddress{{NIC: "lan", Address: "10.0.0.5/24", Gateway: "10.0.0.1"}}}
	require.NoError(t, checkProtectHardware(&good))
	exec := api.ProtectRequest{SourceDriver: "exec", Driver: api.Driver{Stop: "x"}}
	require.NoError(t, checkProtectHardware(&exec))
	require.Empty(t, exec.SourceDriver, "exec is stored as the default")
	vs := api.ProtectRequest{SourceDriver: "vsphere", SourceOptions: map[string]string{"url": "https://vc/sdk", "credentials-file": "/c",
		"datacenter": "DC0", "insecure": "true", "shutdown-timeout": "1m", "task-timeout": "2m"}}
	require.NoError(t, checkProtectHardware(&vs))
	hv := api.ProtectRequest{SourceDriver: "hyperv", SourceOptions: map[string]string{"powershell": "pwsh.exe", "shutdown-timeout": "1m", "powershell-timeout": "2m"}}
	require.NoError(t, checkProtectHardware(&hv))
	err := checkProtectHardware(&api.ProtectRequest{SourceDriver: "vsphere", SourceOptions: map[string]string{"url": "u", "credentials-file": "/c", "datastore": "ds"}})
	require.ErrorContains(t, err, "--datastore is not an option of the vsphere driver at the home site")
	for why, req := range map[string]api.ProtectRequest{
		"firmware":                    {Firmware: "coreboot"},
		"ip of unknown nic":           {NICs: []string{"lan"}, IPs: []api.NICAddress{{NIC: "dmz", Address: "10.0.0.5/24"}}},
		"ip twice":                    {NICs: []string{"lan"}, IPs: []api.NICAddress{{NIC: "lan", Address: "10.0.0.5/24"}, {NIC: "lan", Address: "10.0.0.6/24"}}},
		"address no prefix":           {NICs: []string{"lan"}, IPs: []api.NICAddress{{NIC: "lan", Address: "10.0.0.5"}}},
		"bad gateway":                 {NICs: []string{"lan"}, IPs: []api.NICAddress{{NIC: "lan", Address: "10.0.0.5/24", Gateway: "gw"}}},
		"uri without driver":          {SourceOptions: map[string]string{"uri": "x"}},
		"vsphere without url":         {SourceDriver: "vsphere", SourceOptions: map[string]string{"credentials-file": "/c"}},
		"vsphere without credentials": {SourceDriver: "vsphere", SourceOptions: map[string]string{"url": "https://vc/sdk"}},
		"vsphere datastore at home":   {SourceDriver: "vsphere", SourceOptions: map[string]string{"url": "https://vc/sdk", "credentials-file": "/c", "datastore": "ds"}},
		"hyperv switch at home":       {SourceDriver: "hyperv", SourceOptions: map[string]string{"switch": "LAN"}},
		"hyperv with uri":             {SourceDriver: "hyperv", SourceOptions: map[string]string{"uri": "qemu:///system"}},
		"qemu source":                 {SourceDriver: "qemu"},
		"libvirt with stop":           {SourceDriver: "libvirt", Driver: api.Driver{Stop: "x"}},
	} {
		requireInvalid(t, checkProtectHardware(&req), why)
	}
}
