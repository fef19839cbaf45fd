package vsphere

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
)

// The descriptor the driver writes next to each staged raw disk, in the text
// format of VMware's "Virtual Disk Format 5.0" technical note (section "The
// Descriptor File"). createType "vmfs" with one VMFS extent is the ESXi-native
// flat disk: what ESXi itself writes on VMFS and NFS datastores for a thick
// or thin disk ("NAME.vmdk" pointing at "NAME-flat.vmdk"). Here the extent is
// the raw file itself, so nothing is copied or converted. A VMFS extent line
// has no offset field (the technote gives the offset only for FLAT extents of
// hosted disks); docs/drivers.md says why the hosted createTypes are not used.

// SectorSize is the VMDK sector.
const SectorSize = 512

// DescriptorSuffix names the descriptor of DISK.raw: DISK-esxi.vmdk (not
// DISK.vmdk, which is the target's hosted monolithicSparse copy).
const DescriptorSuffix = "-esxi.vmdk"

// ErrDisk is a staged disk the driver cannot describe to ESXi.
var ErrDisk = errors.New("disk not usable by ESXi")

// Geometry is the virtual CHS geometry recorded in the descriptor's ddb.
type Geometry struct{ Cylinders, Heads, Sectors int64 }

// geometryFor follows what ESXi writes for SCSI disks: 64 heads and 32
// sectors below 1 GiB, 255 and 63 from there; cylinders are the whole
// cylinders the disk holds (not capped for SCSI).
func geometryFor(sectors int64) Geometry {
	g := Geometry{Heads: 255, Sectors: 63}
	if sectors < (1<<30)/SectorSize {
		g = Geometry{Heads: 64, Sectors: 32}
	}
	g.Cylinders = sectors / (g.Heads * g.Sectors)
	return g
}

// DescriptorPath is where the descriptor of a raw disk goes.
func DescriptorPath(rawPath string) string {
	return strings.TrimSuffix(rawPath, filepath.Ext(rawPath)) + DescriptorSuffix
}

// Descriptor returns the descriptor text for a raw extent file (a name in
// the same directory) of size bytes.
func Descriptor(extentFile string, size int64) ([]byte, error) {
	if size <= 0 || size%SectorSize != 0 {
		return nil, fmt.Errorf("%w: %s is %d bytes, not a positive multiple of %d", ErrDisk, extentFile, size, SectorSize)
	}
	if extentFile == "" || strings.ContainsAny(extentFile, "\"/\\\n\r") {
		return nil, fmt.Errorf("%w: extent file name %q cannot be quoted in a descriptor", ErrDisk, extentFile)
	}
	sectors := size / SectorSize
	g := geometryFor(sectors)
	// A content ID that changes with the extent it describes; the parent
	// CID ffffffff means no parent.
	cid := crc32.ChecksumIEEE(fmt.Appendf(nil, "%s/%d", extentFile, sectors))
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Disk DescriptorFile\n")
	fmt.Fprintf(&b, "version=1\n")
	fmt.Fprintf(&b, "encoding=\"UTF-8\"\n")
	fmt.Fprintf(&b, "CID=%08x\n", cid)
	fmt.Fprintf(&b, "parentCID=ffffffff\n")
	fmt.Fprintf(&b, "createType=\"vmfs\"\n")
	fmt.Fprintf(&b, "\n# Extent description\n")
	fmt.Fprintf(&b, "RW %d VMFS \"%s\"\n", sectors, extentFile)
	fmt.Fprintf(&b, "\n# The Disk Data Base\n#DDB\n\n")
	fmt.Fprintf(&b, "ddb.adapterType = \"lsilogic\"\n")
	fmt.Fprintf(&b, "ddb.geometry.cylinders = \"%d\"\n", g.Cylinders)
	fmt.Fprintf(&b, "ddb.geometry.heads = \"%d\"\n", g.Heads)
	fmt.Fprintf(&b, "ddb.geometry.sectors = \"%d\"\n", g.Sectors)
	fmt.Fprintf(&b, "ddb.thinProvisioned = \"1\"\n")
	fmt.Fprintf(&b, "ddb.virtualHWVersion = \"%d\"\n", hardwareVersion)
	return b.Bytes(), nil
}

// hardwareVersion is the virtual hardware version the descriptor names and
// the VMs are created with (vmx-14: ESXi 6.7 and later).
const hardwareVersion = 14

// WriteDescriptor writes (or rewrites, when the raw file's size changed) the
// descriptor of a raw disk next to it and returns the descriptor's path. The
// raw file is only stat'ed. The descriptor is written to a temporary file,
// synced and renamed, and the directory synced.
func WriteDescriptor(rawPath string) (string, error) {
	fi, err := os.Stat(rawPath)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrDisk, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%w: %s is not a regular file", ErrDisk, rawPath)
	}
	text, err := Descriptor(filepath.Base(rawPath), fi.Size())
	if err != nil {
		return "", err
	}
	dst := DescriptorPath(rawPath)
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, text) {
		return dst, nil
	}
	tmp := dst + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return "", err
	}
	if _, err = f.Write(text); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("write descriptor %s: %w", dst, err)
	}
	if d, err := os.Open(filepath.Dir(dst)); err == nil {
		_ = d.Sync() // best effort: directories cannot be synced on every platform
		_ = d.Close()
	}
	return dst, nil
}
