//go:build !linux

package agent

import "github.com/ferrydr/ferry/protocol/msg"

// trackable: write tracking needs Linux tracefs.
func (a *Agent) trackable(cfg msg.MachineConfig) (disks []*trackedDisk, mount, why string) {
	return nil, "", "write tracking needs Linux"
}
