package failover

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/protocol/msg"
)

// targetHypervisor is the hypervisor part of a target driver request for
// machine m under the name the hypervisor knows it by (MACHINE or
// MACHINE-test), on the disks in paths: empty for exec targets. The
// machine's NICs get the target's network map; test machines are kept off
// it by the driver (test-network in the options).
func targetHypervisor(m catalog.Machine, t api.Target, name string, test bool, paths []string) msg.Hypervisor {
	if !t.MapsNetworks() {
		return msg.Hypervisor{}
	}
	format := t.Format
	if format == "" {
		format = "raw"
	}
	spec := &msg.MachineSpec{Name: name, Machine: m.Name, Test: test, CPUs: m.Spec.CPUs, Memory: m.Spec.Memory,
		Firmware: m.Spec.Firmware, NewMACs: t.NewMACs}
	for _, p := range paths {
		spec.Disks = append(spec.Disks, msg.MachineDisk{Name: strings.TrimSuffix(filepath.Base(p), filepath.Ext(p)), Path: p, Format: format})
	}
	addr := map[string]api.NICAddress{}
	for _, ip := range m.Spec.IPs {
		addr[ip.NIC] = ip
	}
	for _, n := range m.Spec.NICs {
		a := addr[n]
		spec.NICs = append(spec.NICs, msg.MachineNIC{Name: n, Network: t.Networks[n], Address: a.Address, Gateway: a.Gateway})
	}
	return msg.Hypervisor{Kind: t.Driver, Options: t.DriverOptions(), Spec: spec}
}

// sourceHypervisor is the hypervisor part of a source driver request: the
// home site's own machine (protect --domain), only powered there (Home).
func sourceHypervisor(m catalog.Machine) msg.Hypervisor {
	if m.Spec.SourceDriver == "" || m.Spec.SourceDriver == api.DriverExec {
		return msg.Hypervisor{}
	}
	name := m.Spec.Domain
	if name == "" {
		name = m.Name
	}
	return msg.Hypervisor{Kind: m.Spec.SourceDriver, Options: m.Spec.SourceOptions, Spec: &msg.MachineSpec{Name: name, Machine: m.Name}, Home: true}
}

// hasStatus reports whether the target's driver can report power state.
func hasStatus(t api.Target) bool { return t.Exec.Status != "" || t.MapsNetworks() }

// unmappedRefusal refuses a failover to a target that does not map one of
// the machine's networks ("" when all are mapped).
func unmappedRefusal(m catalog.Machine, t api.Target) error {
	if un := t.UnmappedNetworks(m.Spec.NICs); len(un) > 0 {
		return refuse("machine %s: network(s) %s have no mapping on target %s (targets add … --network %s=DST)", m.Name, strings.Join(un, ", "), t.Name, un[0])
	}
	return nil
}

// diskPaths are the disks named in a driver environment's FERRY_DISKS.
func diskPaths(env map[string]string) []string {
	var out []string
	for _, p := range strings.Split(env["FERRY_DISKS"], "\n") {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// removeTestDefinition has a hypervisor target delete the test machine's
// definition (never its disks) before its disk set goes: cleanup leaves no
// domain behind. exec targets have nothing to delete.
func removeTestDefinition(ctx context.Context, j *job, name string, md *machineData) error {
	t, err := j.target(ctx, md)
	if err != nil || !t.MapsNetworks() {
		return err
	}
	env, err := j.env(ctx, md, name, false)
	if err != nil {
		return err
	}
	if _, err := j.driver(ctx, md, name, msg.ActionRemove, env); err != nil {
		return fmt.Errorf("removing %s at the target: %w", md.DriverName, err)
	}
	return nil
}
