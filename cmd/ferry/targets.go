package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/api"
)

func newTargetsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "targets", Short: "Recovery-site targets: add, list, remove"}
	var t api.Target
	var opts map[string]*string
	var insecure bool
	var networks []string
	add := &cobra.Command{
		Use:   "add NAME --agent AGENT --dir DIR [--driver exec|libvirt|vsphere|hyperv] [--format raw|qcow2|vhdx|vmdk] [driver options] [--network SRC=DST]… [--test-network NET] [--new-macs]",
		Short: "Bind a recovery-site agent, a directory for staged and failed-over disks, and a driver",
		Long: `Add a target: the agent on a recovery-site host, the directory on that host
where Ferry keeps staged replicas and failed-over disks, and the exec driver
commands that start, stop and report machines there. Driver commands get the
job's context in FERRY_* environment variables (CLI.md "Drivers"); a test
failover sets FERRY_TEST=1 and must keep the machine off production networks.

Hypervisor drivers create the machine from its hardware description:
  libvirt  [--uri URI] [--shutdown-timeout D]          (default qemu:///system)
  vsphere  --url URL --datastore DS --credentials-file FILE [--datacenter DC]
           [--pool POOL] [--folder F] [--mount DIR] [--vm-dir DIR]
           [--insecure | --ca-file FILE] [--guest-id ID] [--guest-domain DOMAIN]
           [--scsi-controller MODEL] [--nic-model MODEL]
           [--shutdown-timeout D] [--task-timeout D]
  hyperv   --format vhdx [--switch NAME] [--powershell PATH]
           [--shutdown-timeout D] [--powershell-timeout D] [--secure-boot on|off]
(vsphere runs raw disks, the default --format; libvirt raw or qcow2),
with --network SRC=DST (repeatable) mapping each source network to one at
this site, --test-network NET for test failovers (none: no network), and
--new-macs. The target agent checks the options and reaches the hypervisor
before the target is stored (docs/drivers.md).`,
		Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			t.Name = args[0]
			if t.Agent == "" || t.Dir == "" {
				return usagef("--agent and --dir are required")
			}
			t.Options = map[string]string{}
			for k, v := range opts {
				if c.Flags().Changed(k) {
					t.Options[k] = *v
				}
			}
			if insecure {
				t.Options["insecure"] = "true"
			}
			if len(t.Options) == 0 {
				t.Options = nil
			}
			nets, err := parseNetworkMap(networks)
			if err != nil {
				return err
			}
			t.Networks = nets
			cl, err := g.client()
			if err != nil {
				return err
			}
			out, err := cl.AddTarget(c.Context(), t)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(out)
			}
			fmt.Fprintf(g.stdout, "target %s: agent %s, %s (%s driver, %s disks)\n", out.Name, out.Agent, out.Dir, out.Driver, out.Format)
			return nil
		},
	}
	f := add.Flags()
	f.StringVar(&t.Agent, "agent", "", "the recovery-site agent")
	f.StringVar(&t.Dir, "dir", "", "directory on the agent's host for staged and failed-over disks")
	f.StringVar(&t.Driver, "driver", "exec", "hypervisor driver: exec, libvirt, vsphere or hyperv")
	opts = addDriverOptionFlags(f, nil)
	f.BoolVar(&insecure, "insecure", false, insecureUsage)
	f.StringArrayVar(&networks, "network", nil, "map a source network to one at this site: SRC=DST (repeatable)")
	f.StringVar(&t.TestNetwork, "test-network", "", "isolated network test failovers join (default: none)")
	f.BoolVar(&t.NewMACs, "new-macs", false, "give failed-over NICs new MAC addresses")
	f.StringVar(&t.Format, "format", "raw", "disk format the driver starts machines on: raw, qcow2, vhdx or vmdk (the latter three are written from the raw set when the machine starts)")
	f.StringVar(&t.Exec.Start, "start", "", "command that creates and starts a machine from FERRY_DISKS")
	f.StringVar(&t.Exec.Stop, "stop", "", "command that stops a machine")
	f.StringVar(&t.Exec.Status, "status", "", "command that prints running, stopped or absent")
	f.StringVar(&t.Exec.Pause, "pause", "", "command that pauses a machine")
	f.StringVar(&t.Exec.Resume, "resume", "", "command that resumes a machine")
	list := &cobra.Command{
		Use: "list", Short: "List targets", Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error { return runTargetsList(c.Context(), g) },
	}
	var force bool
	remove := &cobra.Command{
		Use: "remove NAME --force", Short: "Remove a target no machine uses", Args: exactArgs(1, "NAME"),
		Long: `Remove a target that no machine names as its default. The files under its
directory at the recovery site stay. Needs --force: without it nothing
changes, the target (agent, directory, driver) is shown and the command
exits 2 naming --force.`,
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			if !force {
				return refuseTargetRemove(c.Context(), g, cl, args[0])
			}
			return cl.RemoveTarget(c.Context(), args[0])
		},
	}
	remove.Flags().BoolVar(&force, "force", false, "really remove the target (without it: show what would be removed)")
	cmd.AddCommand(add, list, remove)
	return cmd
}

// parseNetworkMap reads repeated --network SRC=DST flags.
func parseNetworkMap(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, f := range flags {
		src, dst, ok := strings.Cut(f, "=")
		if !ok || src == "" || dst == "" {
			return nil, usagef("--network %q: want SRC=DST", f)
		}
		if _, dup := out[src]; dup {
			return nil, usagef("--network: source network %q is mapped twice", src)
		}
		out[src] = dst
	}
	return out, nil
}

func runTargetsList(ctx context.Context, g *globals) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	ts, err := cl.Targets(ctx)
	if err != nil {
		return err
	}
	if g.json {
		if ts == nil {
			ts = []api.Target{}
		}
		return g.printJSON(ts)
	}
	var rows [][]string
	for _, t := range ts {
		conn := "no"
		if t.Connected {
			conn = "yes"
		}
		rows = append(rows, []string{t.Name, t.Agent, t.Dir, t.Driver, t.Format, conn})
	}
	table(g.stdout, []string{"NAME", "AGENT", "DIR", "DRIVER", "FORMAT", "CONNECTED"}, rows)
	return nil
}
