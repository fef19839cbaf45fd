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

// homeTestHypervisor is the hypervisor part of the home driver's request
// for a failback test's copy: a machine the home hypervisor defines as
// M-test on the clone's disks (test: no production network), with the
// hardware description from protect; empty for an exec home driver.
func homeTestHypervisor(m catalog.Machine, test *catalog.HomeTest) msg.Hypervisor {
	h := sourceHypervisor(m)
	if h.Kind == "" {
		return h
	}
	// The copy is a new machine the driver defines, as at a target: not
	// the home form, which only powers the machine already there.
	h.Home = false
	h.Spec = &msg.MachineSpec{Name: test.Name, Machine: m.Name, Test: true, CPUs: m.Spec.CPUs, Memory: m.Spec.Memory,
		Firmware: m.Spec.Firmware}
	for i, p := range test.Paths {
		d := msg.MachineDisk{Name: strings.TrimSuffix(filepath.Base(p), filepath.Ext(p)), Path: p}
		if len(test.Paths) == len(m.Spec.Disks) && filepath.Ext(m.Spec.Disks[i].Path) == filepath.Ext(p) {
			d.Name, d.Format = m.Spec.Disks[i].Name, m.Spec.Disks[i].Format
		}
		h.Spec.Disks = append(h.Spec.Disks, d)
	}
	return h
}

// homeStoppable reports whether the source driver can stop the machine
// at home (exec --stop, or a hypervisor source driver).
func homeStoppable(m catalog.Machine) bool {
	return m.Spec.Driver.Stop != "" || sourceHypervisor(m).Kind != ""
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
