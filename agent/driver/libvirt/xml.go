package libvirt

import (
	"fmt"
	"path/filepath"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/ferrydr/ferry/agent/driver"
	"github.com/ferrydr/ferry/protocol/msg"
)

// DefaultMemory is a domain's memory when the spec has none.
const DefaultMemory = 1 << 30

// DomainXML is the domain definition Start gives libvirt for spec under name;
// seed, when not "", is a NoCloud seed image attached as a read-only cdrom.
func (d *Driver) DomainXML(name string, spec driver.Spec, seed string) (string, error) {
	if len(spec.Disks) == 0 {
		return "", invalid(driver.ActionStart, "machine %s has no disks", name)
	}
	if len(spec.Disks) > 26 {
		return "", invalid(driver.ActionStart, "machine %s has %d disks: at most 26", name, len(spec.Disks))
	}
	cpus := spec.CPUs
	if cpus <= 0 {
		cpus = 1
	}
	mem := spec.Memory
	if mem <= 0 {
		mem = DefaultMemory
	}
	if mem < 1<<20 {
		return "", invalid(driver.ActionStart, "machine %s: memory %d bytes is under 1 MiB", name, mem)
	}
	dom := &libvirtxml.Domain{
		Type:        d.opts.VirtType,
		Name:        name,
		Description: "Ferry machine " + spec.Machine,
		Memory:      &libvirtxml.DomainMemory{Value: uint(mem >> 10), Unit: "KiB"},
		VCPU:        &libvirtxml.DomainVCPU{Value: uint(cpus)},
		OS: &libvirtxml.DomainOS{
			Type:        &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"},
			BootDevices: []libvirtxml.DomainBootDevice{{Dev: "hd"}},
		},
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices:    &libvirtxml.DomainDeviceList{},
	}
	switch spec.Firmware {
	case "", "bios":
	case "uefi":
		dom.OS.Firmware = "efi"
	default:
		return "", invalid(driver.ActionStart, "machine %s: firmware %q: want bios or uefi", name, spec.Firmware)
	}
	for i, dk := range spec.Disks {
		if !filepath.IsAbs(dk.Path) {
			return "", invalid(driver.ActionStart, "disk %s: path %q is not absolute", dk.Name, dk.Path)
		}
		format := dk.Format
		switch format {
		case "":
			format = "raw"
			if strings.HasSuffix(dk.Path, ".qcow2") {
				format = "qcow2"
			}
		case "raw", "qcow2":
		default:
			return "", invalid(driver.ActionStart, "disk %s: format %q: libvirt takes raw or qcow2", dk.Name, dk.Format)
		}
		dom.Devices.Disks = append(dom.Devices.Disks, libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: format},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: dk.Path}},
			Target: &libvirtxml.DomainDiskTarget{Dev: "vd" + string(rune('a'+i)), Bus: "virtio"},
			Serial: serial(dk.Name),
		})
	}
	if seed != "" {
		dom.Devices.Disks = append(dom.Devices.Disks, libvirtxml.DomainDisk{
			Device:   "cdrom",
			Driver:   &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
			Source:   &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: seed}},
			Target:   &libvirtxml.DomainDiskTarget{Dev: "sda", Bus: "sata"},
			ReadOnly: &libvirtxml.DomainDiskReadOnly{},
		})
	}
	for i, n := range d.nics(spec) {
		ifc := libvirtxml.DomainInterface{
			MAC:   &libvirtxml.DomainInterfaceMAC{Address: macFor(name, i, n, spec.NewMACs)},
			Model: &libvirtxml.DomainInterfaceModel{Type: "virtio"},
		}
		switch {
		case n.Network == "":
			return "", invalid(driver.ActionStart, "nic %s: no network at this site (add a --network mapping)", n.Name)
		case strings.HasPrefix(n.Network, BridgePrefix):
			ifc.Source = &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: strings.TrimPrefix(n.Network, BridgePrefix)}}
		default:
			ifc.Source = &libvirtxml.DomainInterfaceSource{Network: &libvirtxml.DomainInterfaceSourceNetwork{Network: n.Network}}
		}
		dom.Devices.Interfaces = append(dom.Devices.Interfaces, ifc)
	}
	port := uint(0)
	dom.Devices.Serials = []libvirtxml.DomainSerial{{Target: &libvirtxml.DomainSerialTarget{Port: &port}}}
	if spec.Test {
		// A test machine's console is logged beside its disks, where a
		// drill waits for its boot marker and reads its tail; the firmware
		// writes there too, so a disk that does not boot says so. The set
		// directory goes at cleanup, and the log with it.
		dom.Devices.Serials[0].Log = &libvirtxml.DomainChardevLog{
			File: filepath.Join(filepath.Dir(spec.Disks[0].Path), msg.ConsoleLogName), Append: "off"}
		dom.OS.BIOS = &libvirtxml.DomainBIOS{UseSerial: "yes"}
	}
	dom.Devices.Consoles = []libvirtxml.DomainConsole{{Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port}}}
	x, err := dom.Marshal()
	if err != nil {
		return "", fmt.Errorf("domain %s xml: %w", name, err)
	}
	return x, nil
}

// withUUID is domain XML x with the given UUID (that of the definition it
// updates).
func withUUID(x string, uuid golibvirt.UUID) (string, error) {
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(x); err != nil {
		return "", err
	}
	u := uuid[:]
	dom.UUID = fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	return dom.Marshal()
}

// nics are the NICs the domain gets: spec's, except that a test domain joins
// only the test network (every NIC, so the guest keeps its NIC layout) or
// has none when there is no test network.
func (d *Driver) nics(spec driver.Spec) []driver.NIC {
	if !spec.Test {
		return spec.NICs
	}
	if d.opts.TestNetwork == "" {
		return nil
	}
	out := make([]driver.NIC, len(spec.NICs))
	for i, n := range spec.NICs {
		n.Network = d.opts.TestNetwork
		out[i] = n
	}
	return out
}

// serial is a disk serial libvirt accepts (alphanumerics, '-', '_', '.').
func serial(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			b.WriteRune(r)
		}
		if b.Len() == 20 {
			break
		}
	}
	return b.String()
}
