// Package driver powers and pauses machines on behalf of the agent. The exec
// driver runs configured commands (CLI.md "Drivers"); hypervisor drivers
// (qemu, libvirt, hyperv) come later behind the same interface.
package driver
