// Package disk reads virtual disks as the guest sees them and writes them in
// the formats a recovery-site hypervisor wants.
//
// A Source is the guest view of one disk: its virtual size, ReadAt that
// returns zeros where nothing is allocated, and the allocated extents so that
// holes are never read or sent. Readers exist for raw files and block
// devices, VHDX, VHD, VMDK and qcow2, including parent/backing chains. Images
// that cannot be read faithfully (dirty, corrupt, encrypted, unknown
// features) are refused with a *FormatError that wraps ErrUnsupported,
// ErrCorrupt or ErrDirty.
//
// On Linux a block device is read with O_DIRECT, around its page cache,
// which the filesystem mounted on it does not keep up to date (direct.go).
//
// Write produces raw (sparse), qcow2, VHDX (dynamic) and VMDK
// (monolithicSparse) natively, so that a recovery host without qemu-img
// (a Windows Hyper-V host) can still produce the disk it needs.
//
// OpenInPlace updates an existing raw image, block device, qcow2 or VHDX
// in place, block by block, keeping each container's own crash safety
// (qcow2 refcount ordering, the VHDX log) and holding QEMU-compatible
// image locks; VMDK and VHD are refused for it.
//
// The package is cgo-free; the formats are implemented from their published
// specifications, see docs/disk-formats.md.
package disk
