package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/api"
)

func newTargetsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "targets", Short: "Recovery-site targets: add, list, remove"}
	var t api.Target
	add := &cobra.Command{
		Use:   "add NAME --agent AGENT --dir DIR [--driver exec] [--format raw|qcow2|vhdx|vmdk] --start CMD [--stop CMD] [--status CMD] …",
		Short: "Bind a recovery-site agent, a directory for staged and failed-over disks, and a driver",
		Long: `Add a target: the agent on a recovery-site host, the directory on that host
where Ferry keeps staged replicas and failed-over disks, and the exec driver
commands that start, stop and report machines there. Driver commands get the
job's context in FERRY_* environment variables (CLI.md "Drivers"); a test
failover sets FERRY_TEST=1 and must keep the machine off production networks.`,
		Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			t.Name = args[0]
			if t.Agent == "" || t.Dir == "" {
				return usagef("--agent and --dir are required")
			}
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
	f.StringVar(&t.Driver, "driver", "exec", "hypervisor driver: exec")
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
	remove := &cobra.Command{
		Use: "remove NAME", Short: "Remove a target no machine uses", Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			return cl.RemoveTarget(c.Context(), args[0])
		},
	}
	cmd.AddCommand(add, list, remove)
	return cmd
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
