//go:build !linux

package agent

import (
	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/protocol/msg"
)

// trackable: write tracking needs Linux tracefs and eBPF.
func (a *Agent) trackable(cfg msg.MachineConfig) (disks []*trackedDisk, mounts []string, why string) {
	return nil, nil, "write tracking needs Linux"
}

// trackableWith: write tracking needs Linux tracefs and eBPF.
func (a *Agent) trackableWith(cfg msg.MachineConfig, drv snapshot.Driver) (disks []*trackedDisk, mounts []string, pause bool, why string) {
	return nil, nil, false, "write tracking needs Linux"
}

// dropBlockTrackers: there are none here.
func (a *Agent) dropBlockTrackers(cfg msg.MachineConfig) {}
