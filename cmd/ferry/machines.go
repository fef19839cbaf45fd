package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/api"
)

type protectOptions struct {
	agent, policy, target string
	disks, nics, freeze   []string
	cpus                  int
	memory                string
	driver                api.Driver
	preSnapshot, postSnap string
	sourceDriver          string
	home                  homeDriverFlags
	domain, firmware      string
	ips                   []string
	wait                  bool
	sourceOpts            map[string]string // the home driver's options given
}

func newProtectCommand(g *globals) *cobra.Command {
	var o protectOptions
	cmd := &cobra.Command{
		Use:   "protect MACHINE --agent AGENT --disk [NAME=]PATH [--disk …]",
		Short: "Start protecting a machine: replicate its disks to the controller",
		Long: `Protect a machine: its source agent replicates the named disks to the
controller per the policy. A disk is a block device, a raw image or a VHDX,
VHD, VMDK or qcow2 file. The source driver commands (--start … --status) are run
by the source agent to power and pause the machine; --status must print
running, stopped or absent.

Or a hypervisor driver powers the machine where it runs (--domain names it
there; it must exist: Ferry never creates, changes or removes it):
  libvirt  [--uri URI] [--shutdown-timeout D]
  vsphere  --url URL --credentials-file FILE [--datacenter DC]
           [--insecure | --ca-file FILE] [--shutdown-timeout D] [--task-timeout D]
  hyperv   [--powershell PATH] [--shutdown-timeout D] [--powershell-timeout D]
The source agent checks the options and reaches the hypervisor before the
machine is stored (docs/drivers.md "Home-site drivers").`,
		Args: exactArgs(1, "MACHINE"),
		RunE: func(c *cobra.Command, args []string) error {
			o.sourceOpts = o.home.options(c.Flags().Changed, false)
			return runProtect(c.Context(), g, args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.agent, "agent", "", "the source agent (name or id)")
	f.StringArrayVar(&o.disks, "disk", nil, "a disk, [NAME=]PATH (repeatable; NAME defaults to the file's base name)")
	f.StringVar(&o.policy, "policy", "", "replication policy (default: default)")
	f.StringVar(&o.target, "target", "", "default failover target")
	f.IntVar(&o.cpus, "cpus", 0, "CPUs of the machine, for the target's driver")
	f.StringVar(&o.memory, "memory", "", "memory of the machine, e.g. 4GiB")
	f.StringArrayVar(&o.nics, "nic", nil, "a network the machine attaches to (repeatable)")
	f.StringVar(&o.driver.Start, "start", "", "command that starts the machine")
	f.StringVar(&o.driver.Stop, "stop", "", "command that stops the machine")
	f.StringVar(&o.driver.Pause, "pause", "", "command that pauses the machine (writes stop)")
	f.StringVar(&o.driver.Resume, "resume", "", "command that resumes a paused machine")
	f.StringVar(&o.driver.Status, "status", "", "command that prints running, stopped or absent")
	f.StringVar(&o.preSnapshot, "pre-snapshot", "", "command run before an app-consistent snapshot (quiesce)")
	f.StringVar(&o.postSnap, "post-snapshot", "", "command run after an app-consistent snapshot")
	f.StringArrayVar(&o.freeze, "freeze", nil, "a mount point to fsfreeze for app-consistent snapshots (repeatable)")
	f.StringVar(&o.sourceDriver, "driver", "exec", "the home site's driver: exec (the commands above), libvirt, vsphere or hyperv (power only, on the existing machine)")
	o.home.add(f)
	f.StringVar(&o.domain, "domain", "", "the machine's name at the home site's hypervisor (default: MACHINE)")
	f.StringVar(&o.firmware, "firmware", "", "bios or uefi, for the target's driver (default bios)")
	f.StringArrayVar(&o.ips, "ip", nil, "re-IP at failover: NIC=ADDR/PREFIX[,GATEWAY] (repeatable; NIC as given to --nic)")
	f.BoolVar(&o.wait, "wait", false, "follow the initial sync (a progress bar on a terminal) until the first recovery point, and print it")
	return cmd
}

// parseDisks turns [NAME=]PATH flags into disk refs with unique names.
func parseDisks(flags []string) ([]api.DiskRef, error) {
	var out []api.DiskRef
	seen := map[string]bool{}
	for _, d := range flags {
		name, path, ok := strings.Cut(d, "=")
		if !ok {
			path = d
			name = strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		}
		if name == "" || path == "" {
			return nil, usagef("--disk %q: want [NAME=]PATH", d)
		}
		if strings.ContainsAny(name, "/\\ ") {
			return nil, usagef("--disk %q: a disk name may not contain '/', '\\' or spaces", d)
		}
		if seen[name] {
			return nil, usagef("--disk: two disks are named %q; name them with NAME=PATH", name)
		}
		seen[name] = true
		out = append(out, api.DiskRef{Name: name, Path: path})
	}
	return out, nil
}

// parseIPs reads --ip NIC=ADDR/PREFIX[,GATEWAY] flags.
func parseIPs(flags []string) ([]api.NICAddress, error) {
	var out []api.NICAddress
	for _, f := range flags {
		nic, rest, ok := strings.Cut(f, "=")
		addr, gw, _ := strings.Cut(rest, ",")
		if !ok || nic == "" || addr == "" {
			return nil, usagef("--ip %q: want NIC=ADDR/PREFIX[,GATEWAY]", f)
		}
		out = append(out, api.NICAddress{NIC: nic, Address: addr, Gateway: gw})
	}
	return out, nil
}

func runProtect(ctx context.Context, g *globals, machine string, o protectOptions) error {
	if o.agent == "" {
		return usagef("--agent is required")
	}
	if len(o.disks) == 0 {
		return usagef("at least one --disk is required")
	}
	disks, err := parseDisks(o.disks)
	if err != nil {
		return err
	}
	var mem int64
	if o.memory != "" {
		if mem, err = api.ParseSize(o.memory); err != nil {
			return usagef("--memory: %v", err)
		}
	}
	if (o.driver.Pause == "") != (o.driver.Resume == "") {
		return usagef("--pause and --resume go together")
	}
	ips, err := parseIPs(o.ips)
	if err != nil {
		return err
	}
	srcOpts := o.sourceOpts
	if o.sourceDriver == "exec" {
		o.sourceDriver = ""
	}
	cl, err := g.client()
	if err != nil {
		return err
	}
	m, err := cl.Protect(ctx, api.ProtectRequest{
		Machine: machine, Agent: o.agent, Disks: disks, Policy: o.policy, Target: o.target,
		CPUs: o.cpus, Memory: mem, NICs: o.nics, Driver: o.driver,
		PreSnapshot: o.preSnapshot, PostSnapshot: o.postSnap, Freeze: o.freeze,
		SourceDriver: o.sourceDriver, SourceOptions: srcOpts, Domain: o.domain, Firmware: o.firmware, IPs: ips,
	})
	if err != nil {
		return err
	}
	if o.wait {
		if !g.json {
			fmt.Fprintf(g.stdout, "protecting %s on agent %s (%d disk(s), policy %s); waiting for its first point\n", m.Name, m.Agent, len(m.Disks), m.Policy)
		}
		return waitFirstPoint(ctx, g, cl, m.Name)
	}
	if g.json {
		return g.printJSON(m)
	}
	fmt.Fprintf(g.stdout, "protecting %s on agent %s (%d disk(s), policy %s); state %s\n", m.Name, m.Agent, len(m.Disks), m.Policy, m.State)
	return nil
}

func newUnprotectCommand(g *globals) *cobra.Command {
	var deletePoints, force bool
	cmd := &cobra.Command{
		Use: "unprotect MACHINE [--delete-points --force]", Short: "Stop protecting a machine (keeps its points unless --delete-points)",
		Long: `Stop protecting a machine: its agent stops replicating it. Its recovery
points stay (exportable) unless --delete-points, which needs --force: without
it nothing changes, the points it would delete are listed (id, time,
consistency, size, name) and the command exits 2 naming --force.`,
		Args: exactArgs(1, "MACHINE"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			if deletePoints && !force {
				return refuseDeletePoints(c.Context(), g, cl, args[0])
			}
			return cl.Unprotect(c.Context(), args[0], deletePoints)
		},
	}
	cmd.Flags().BoolVar(&deletePoints, "delete-points", false, "also delete the machine's stored recovery points (needs --force)")
	cmd.Flags().BoolVar(&force, "force", false, "really delete the points of --delete-points (without it: list what would be deleted)")
	return cmd
}

func newMachinesCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "machines", Short: "Protected machines: list, show, update"}
	list := &cobra.Command{
		Use: "list", Short: "List machines (name, agent, state, health, rpo, verified point age, last point, active site, live cycle progress)", Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error { return runMachinesList(c.Context(), g) },
	}
	show := &cobra.Command{
		Use: "show MACHINE", Short: "Show a machine: state, allowed actions, disks, its replication cycle", Args: exactArgs(1, "MACHINE"),
		Long: `Show a machine: its state and health (with the reason when it is not
healthy: a machine that is not replicating, failed over for example, is a
warning), RPO, allowed next actions and disks, and its replication cycle.

The cycle is what the source agent reports about once a second while it
runs: in --json, progress {phase (shipping, resync, idle once it ended,
error), bytes_done, bytes_total, rate_bps, started, updated, eta_seconds
(while it runs)}. bytes_total is the bytes of the blocks the cycle compares
(for an initial sync, the disks' allocated data); bytes_done rises to it.
A machine whose agent has not reported a cycle since the controller started
has no progress.

The newest point's line says how its view was made (last_point_method in
--json: reflink, tracked-freeze, quiet-file, direct-read, powered-off, …;
"ferry points list --help" says what each means) and, when that
point is inconsistent, why (last_point_reason).`,
		RunE: func(c *cobra.Command, args []string) error { return runMachineShow(c.Context(), g, args[0]) },
	}
	cmd.AddCommand(list, show, newMachinesUpdateCommand(g))
	return cmd
}

func fmtRPO(m api.Machine) string {
	if m.RPOSeconds == nil {
		return "-"
	}
	return (time.Duration(*m.RPOSeconds * float64(time.Second))).Round(100 * time.Millisecond).String()
}

// fmtVerified is the age of the newest point a drill verified: the RPO
// that is proven to boot.
func fmtVerified(m api.Machine) string {
	if m.VerifiedSeconds == nil {
		return "-"
	}
	return (time.Duration(*m.VerifiedSeconds * float64(time.Second))).Round(time.Second).String()
}

func runMachinesList(ctx context.Context, g *globals) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	ms, err := cl.Machines(ctx)
	if err != nil {
		return err
	}
	if g.json {
		if ms == nil {
			ms = []api.Machine{}
		}
		return g.printJSON(ms)
	}
	var rows [][]string
	for _, m := range ms {
		last := "-"
		if m.LastPoint != nil {
			last = fmtTime(*m.LastPoint)
		}
		health := m.Health
		if m.HealthReason != "" && m.Health != "healthy" {
			health += " (" + m.HealthReason + ")"
		}
		rows = append(rows, []string{m.Name, m.Agent, m.State, health, fmtRPO(m), fmtVerified(m), last, m.ActiveSite, fmtProgressShort(m.Progress)})
	}
	table(g.stdout, []string{"NAME", "AGENT", "STATE", "HEALTH", "RPO", "VERIFIED", "LAST POINT", "ACTIVE SITE", "CYCLE"}, rows)
	return nil
}

func runMachineShow(ctx context.Context, g *globals, name string) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	m, err := cl.Machine(ctx, name)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(m)
	}
	w := g.stdout
	fmt.Fprintf(w, "Machine:      %s\n", m.Name)
	fmt.Fprintf(w, "Agent:        %s\n", m.Agent)
	fmt.Fprintf(w, "State:        %s\n", m.State)
	fmt.Fprintf(w, "Health:       %s", m.Health)
	if m.HealthReason != "" {
		fmt.Fprintf(w, " — %s", m.HealthReason)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "RPO:          %s\n", fmtRPO(m))
	if m.VerifiedSeconds != nil {
		fmt.Fprintf(w, "Verified:     point %d, %s old (passed a drill)\n", m.VerifiedPoint, fmtVerified(m))
	}
	if m.LastPoint != nil {
		fmt.Fprintf(w, "Last point:   %s", fmtTime(*m.LastPoint))
		if m.LastPointMethod != "" {
			fmt.Fprintf(w, " (%s)", m.LastPointMethod)
		}
		fmt.Fprintln(w)
		if m.LastPointReason != "" {
			fmt.Fprintf(w, "  inconsistent: %s\n", m.LastPointReason)
		}
	}
	fmt.Fprintf(w, "Active site:  %s\nDirection:    %s\nPolicy:       %s\n", m.ActiveSite, m.Direction, m.Policy)
	if m.Target != "" {
		fmt.Fprintf(w, "Target:       %s\n", m.Target)
	}
	if m.Replication.Phase != "" {
		fmt.Fprintf(w, "Replication:  %s", m.Replication.Phase)
		if m.Replication.LastError != "" {
			fmt.Fprintf(w, " — last error: %s", m.Replication.LastError)
		}
		fmt.Fprintln(w)
	}
	if m.Progress != nil {
		fmt.Fprintf(w, "Cycle:        %s\n", fmtProgressLong(m.Progress))
	}
	if m.Job != "" {
		fmt.Fprintf(w, "Running job:  %s\n", m.Job)
	}
	fmt.Fprintf(w, "Allowed:      %s\n", strings.Join(m.AllowedActions, ", "))
	if m.Fence != nil {
		fmt.Fprintf(w, "Fence:        %s (job %s)\n", m.Fence.Note, m.Fence.Job)
	}
	for _, r := range m.Reasons {
		fmt.Fprintf(w, "  note: %s\n", r)
	}
	fmt.Fprintln(w, "Disks:")
	var rows [][]string
	for _, d := range m.Disks {
		rows = append(rows, []string{"  " + d.Name, d.SourcePath, orDash(d.SourceFormat), orDash(d.TargetPath), api.FormatSize(d.Size)})
	}
	table(w, []string{"  NAME", "SOURCE PATH", "FORMAT", "TARGET PATH", "SIZE"}, rows)
	printAudit(w, m.Audit)
	return nil
}

// printAudit prints the point audit of a machine: the pass, and each
// retained point's last audit with what it found (damage by disk and block).
func printAudit(w io.Writer, a *api.MachineAudit) {
	if a == nil {
		return
	}
	fmt.Fprintf(w, "Point audit:  %s\n", auditPassText(a.Pass))
	var rows [][]string
	for _, p := range a.Points {
		at, state, found := "never", "ok", "-"
		if p.AuditedAt != nil {
			at = fmtTime(*p.AuditedAt)
		}
		if p.Damaged {
			state = "damaged"
		}
		var fs []string
		for _, d := range p.Damage {
			fs = append(fs, fmt.Sprintf("disk %s blocks %v: %s", d.Disk, d.Blocks, d.Error))
		}
		if len(fs) > 0 {
			found = strings.Join(fs, "; ")
		}
		rows = append(rows, []string{"  " + strconv.FormatInt(p.PointID, 10), at, state, found})
	}
	table(w, []string{"  POINT", "AUDITED", "STATE", "LAST AUDIT FOUND"}, rows)
}

func auditPassText(p api.AuditPass) string {
	rate := "unlimited"
	if p.RateLimit > 0 {
		rate = api.FormatSize(p.RateLimit) + "/s"
	}
	var b strings.Builder
	if p.Running {
		pct := 0.0
		if p.ChunksTotal > 0 {
			pct = 100 * float64(p.Chunks) / float64(p.ChunksTotal)
		}
		fmt.Fprintf(&b, "pass running since %s: %d of %d chunks (%.0f%%), %s read, at most %s", fmtTime(*p.Started), p.Chunks, p.ChunksTotal, pct, api.FormatSize(p.Bytes), rate)
	} else if p.BackgroundOff {
		b.WriteString("no background audit (--audit-rate 0); 'ferry points audit' runs a pass")
	} else {
		fmt.Fprintf(&b, "idle, at most %s", rate)
	}
	if p.LastEnded != nil {
		fmt.Fprintf(&b, "; last pass %s–%s", fmtTime(*p.LastStarted), fmtTime(*p.LastEnded))
		if p.LastError != "" {
			fmt.Fprintf(&b, " failed: %s", p.LastError)
		}
	}
	return b.String()
}
