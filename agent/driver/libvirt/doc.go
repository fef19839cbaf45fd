// Package libvirt is the libvirt hypervisor driver (KVM hosts): it implements
// driver.Hypervisor through libvirt's own RPC protocol in pure Go
// (github.com/digitalocean/go-libvirt), against a local or remote libvirtd.
//
// Domains are defined from a driver.Spec with libvirt.org/go/libvirtxml
// (type='qemu' by default, 'kvm' with the virt-type option), their disks are
// the files the target agent wrote (raw or qcow2, never deleted), NICs join a
// libvirt network or a host bridge ("bridge:NAME"), and a NIC with an address
// gets a cloud-init NoCloud seed (an ISO9660 image labelled cidata) attached as
// a cdrom. Test domains get a distinct name (MACHINE-test) and no production
// network. Errors are classified as driver.Error kinds. See docs/drivers.md.
package libvirt
