package controller

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/protocol/msg"
)

// validateTimeout bounds targets add's check through the target agent.
const validateTimeout = time.Minute

// checkTargetDriver checks a target's driver, options and network map
// without the agent: which options belong to which driver, exec commands
// only for exec, no empty network names.
func checkTargetDriver(t *api.Target) error {
	keys, ok := api.TargetOptionKeys[t.Driver]
	if !ok {
		return api.Errorf(api.CodeInvalid, "driver %q: want exec, libvirt, vsphere or hyperv", t.Driver)
	}
	for k, v := range t.Options {
		if !slices.Contains(keys, k) {
			return api.Errorf(api.CodeInvalid, "--%s is not an option of the %s driver", k, t.Driver)
		}
		if v == "" {
			delete(t.Options, k)
		}
	}
	for src, dst := range t.Networks {
		if src == "" || dst == "" || strings.ContainsAny(src+dst, ",=") {
			return api.Errorf(api.CodeInvalid, "--network %s=%s: want SRC=DST with both names non-empty", src, dst)
		}
	}
	if t.Driver == api.DriverExec {
		if len(t.Networks) > 0 || t.TestNetwork != "" || t.NewMACs {
			return api.Errorf(api.CodeInvalid, "the exec driver does not attach networks (its --start command does): --network, --test-network and --new-macs need libvirt, vsphere or hyperv")
		}
		if t.Exec.Start == "" {
			return api.Errorf(api.CodeInvalid, "the exec driver needs at least --start")
		}
		return nil
	}
	if t.Exec != (api.Driver{}) {
		return api.Errorf(api.CodeInvalid, "--start, --stop, --status, --pause and --resume are exec driver commands, not %s options", t.Driver)
	}
	if t.Driver == api.DriverLibvirt && t.Format != "raw" && t.Format != "qcow2" {
		return api.Errorf(api.CodeInvalid, "the libvirt driver runs machines on raw or qcow2 disks, not %s", t.Format)
	}
	if t.Driver == api.DriverVSphere && t.Format != "raw" {
		return api.Errorf(api.CodeInvalid, "the vsphere driver runs machines on raw disks (through a flat descriptor), not %s", t.Format)
	}
	if t.Driver == api.DriverHyperV && t.Format != "vhdx" {
		return api.Errorf(api.CodeInvalid, "the hyperv driver runs machines on vhdx disks, not %s: give --format vhdx", t.Format)
	}
	if t.Driver == api.DriverVSphere && (t.Options["url"] == "" || t.Options["datastore"] == "") {
		return api.Errorf(api.CodeInvalid, "the vsphere driver needs --url and --datastore")
	}
	return nil
}

// validateTargetDriver has the target agent check the driver's options and
// reach its hypervisor, and refuses a map that leaves networks of the
// target's machines unmapped. The agent must be connected.
func (s *Server) validateTargetDriver(ctx context.Context, agentID string, t api.Target) error {
	if !t.MapsNetworks() {
		return nil
	}
	ms, err := s.cat.Machines(ctx, "")
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Target != t.Name {
			continue
		}
		if un := t.UnmappedNetworks(m.Spec.NICs); len(un) > 0 {
			return api.Errorf(api.CodeInvalid, "machine %s uses network(s) %s that target %s does not map: add --network %s=…", m.Name, strings.Join(un, ", "), t.Name, un[0])
		}
	}
	if _, ok := s.agents.get(agentID); !ok {
		return api.Errorf(api.CodeUnavailable, "agent %s is not connected: the %s driver is checked through it", t.Agent, t.Driver)
	}
	req := msg.TargetValidateRequest{Kind: t.Driver, Options: t.DriverOptions(), Networks: t.DestinationNetworks(), Dir: t.Dir}
	cctx, cancel := context.WithTimeout(ctx, validateTimeout)
	defer cancel()
	if err := s.agents.call(cctx, agentID, t.Agent, msg.MethodTargetValidate, req, &struct{}{}); err != nil {
		return apiErr(fmt.Errorf("target %s: %w", t.Name, err))
	}
	return nil
}

// checkMachineNetworks refuses to bind a machine to a target whose driver
// maps networks when one of the machine's NICs has no mapping there.
func checkMachineNetworks(m catalog.Machine, t api.Target) error {
	if un := t.UnmappedNetworks(m.Spec.NICs); len(un) > 0 {
		return api.Errorf(api.CodeInvalid, "machine %s: network(s) %s have no mapping on target %s (targets add … --network %s=DST)", m.Name, strings.Join(un, ", "), t.Name, un[0])
	}
	return nil
}

// checkProtectHardware checks the hardware description and the source
// driver of a protect request: firmware, re-IP addresses of known NICs,
// source driver options, no exec commands beside a hypervisor driver.
func checkProtectHardware(req *api.ProtectRequest) error {
	switch req.Firmware {
	case "", "bios", "uefi":
	default:
		return api.Errorf(api.CodeInvalid, "--firmware %q: want bios or uefi", req.Firmware)
	}
	if err := api.CheckNICAddresses(req.NICs, req.IPs); err != nil {
		return api.Errorf(api.CodeInvalid, "%v", err)
	}
	if req.SourceDriver == api.DriverExec {
		req.SourceDriver = ""
	}
	if err := checkSourceDriver(req.SourceDriver, req.SourceOptions); err != nil {
		return err
	}
	if req.SourceDriver != "" && req.Driver != (api.Driver{}) {
		return api.Errorf(api.CodeInvalid, "--start, --stop, --status, --pause and --resume are exec driver commands, not %s options", req.SourceDriver)
	}
	return nil
}

// checkSourceDriver checks a home-site driver ("" is exec) and its
// options, without the agent: a known driver, only the options it takes at
// the home site (api.HomeOptionKeys), and the ones it needs.
func checkSourceDriver(name string, opts map[string]string) error {
	keys, ok := api.HomeOptionKeys[name]
	if name == "" {
		keys, ok = nil, true
	}
	if !ok {
		return api.Errorf(api.CodeInvalid, "source --driver %q: want exec, libvirt, vsphere or hyperv", name)
	}
	ks := slices.Sorted(maps.Keys(opts))
	for _, k := range ks {
		if slices.Contains(keys, k) {
			continue
		}
		if name == "" {
			return api.Errorf(api.CodeInvalid, "--%s is a hypervisor driver option: it needs --driver libvirt, vsphere or hyperv", k)
		}
		return api.Errorf(api.CodeInvalid, "--%s is not an option of the %s driver at the home site (there it takes %s)", k, name, flagList(keys))
	}
	for _, k := range api.HomeRequiredKeys[name] {
		if opts[k] == "" {
			return api.Errorf(api.CodeInvalid, "the %s driver at the home site needs --%s", name, k)
		}
	}
	return nil
}

// flagList is keys as flags: "--a, --b".
func flagList(keys []string) string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = "--" + k
	}
	return strings.Join(out, ", ")
}

// validateSourceDriver has the source agent check a hypervisor source
// driver's options and reach its hypervisor.
func (s *Server) validateSourceDriver(ctx context.Context, agentID, agentName string, req api.ProtectRequest) error {
	if req.SourceDriver == "" {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, validateTimeout)
	defer cancel()
	vr := msg.TargetValidateRequest{Kind: req.SourceDriver, Options: req.SourceOptions, Home: true}
	if err := s.agents.call(cctx, agentID, agentName, msg.MethodTargetValidate, vr, &struct{}{}); err != nil {
		return apiErr(fmt.Errorf("source driver %s: %w", req.SourceDriver, err))
	}
	return nil
}
