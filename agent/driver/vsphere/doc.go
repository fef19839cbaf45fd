// Package vsphere is the VMware vSphere hypervisor driver: it registers,
// reconfigures, powers and unregisters a recovery-site virtual machine
// through the vSphere API (github.com/vmware/govmomi), over disks staged as
// raw files on an NFS datastore and described to ESXi by a flat VMDK
// descriptor written next to each raw file (docs/drivers.md, "vSphere").
package vsphere
