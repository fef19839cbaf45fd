package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/api"
)

func newAgentsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "agents", Short: "Enrolled agents: list, revoke, remove"}
	list := &cobra.Command{
		Use: "list", Short: "List agents (name, id, address, version, platform, last_seen, connected, and what a connected agent allows: plan scripts, exec drivers)", Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error { return runAgentsList(c.Context(), g) },
	}
	var force bool
	revoke := &cobra.Command{
		Use: "revoke AGENT --force", Short: "Revoke an agent's certificates and end its session", Args: exactArgs(1, "AGENT"),
		Long: `Revoke an agent: its certificates are refused from now on and its session
ends, so it replicates nothing more. In this release a revoke without --force
still proceeds, with a warning on stderr; the next release requires --force.`,
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			if err := cl.RevokeAgent(c.Context(), args[0]); err != nil {
				return err
			}
			if !force {
				// After the revoke: a refused one keeps stderr to its error
				// (JSON under --json).
				fmt.Fprintln(g.stderr, revokeWarning)
			}
			return nil
		},
	}
	revoke.Flags().BoolVar(&force, "force", false, "really revoke (required from the next release; without it a warning is printed)")
	remove := &cobra.Command{
		Use: "remove AGENT", Short: "Forget an agent (it must protect no machine)", Args: exactArgs(1, "AGENT"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			return cl.RemoveAgent(c.Context(), args[0])
		},
	}
	var all bool
	upgrade := &cobra.Command{
		Use:   "upgrade AGENT|--all",
		Short: "Push the controller's agent version to connected agents (they restart into it; a failed upgrade rolls back)",
		Args: func(_ *cobra.Command, args []string) error {
			if all == (len(args) == 1) || len(args) > 1 {
				return usagef("give one AGENT or --all")
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			req := api.UpgradeRequest{All: all}
			if len(args) == 1 {
				req.Agent = args[0]
			}
			return runAgentsUpgrade(c.Context(), g, req)
		},
	}
	upgrade.Flags().BoolVar(&all, "all", false, "upgrade every connected agent")
	show := &cobra.Command{
		Use: "show AGENT", Short: "Show one agent, with what it allows the controller to run on its host (plan scripts, exec drivers)", Args: exactArgs(1, "AGENT"),
		RunE: func(c *cobra.Command, args []string) error { return runAgentShow(c.Context(), g, args[0]) },
	}
	cmd.AddCommand(list, show, revoke, remove, upgrade)
	return cmd
}

func runAgentShow(ctx context.Context, g *globals, name string) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	agents, err := cl.Agents(ctx)
	if err != nil {
		return err
	}
	for _, a := range agents {
		if a.Name != name && a.ID != name {
			continue
		}
		if g.json {
			return g.printJSON(a)
		}
		conn := "no"
		if a.Connected {
			conn = "yes"
		}
		if a.Revoked {
			conn = "revoked"
		}
		w := g.stdout
		fmt.Fprintf(w, "name:       %s\n", a.Name)
		fmt.Fprintf(w, "id:         %s\n", a.ID)
		fmt.Fprintf(w, "address:    %s\n", orDash(a.Address))
		fmt.Fprintf(w, "version:    %s (%s)\n", orDash(a.Version), orDash(a.Platform))
		fmt.Fprintf(w, "hostname:   %s\n", orDash(a.Hostname))
		fmt.Fprintf(w, "connected:  %s (last seen %s)\n", conn, fmtAgo(a.LastSeen, time.Now()))
		fmt.Fprintf(w, "cert:       expires %s\n", fmtTime(a.CertExpires))
		if a.Allows == nil {
			fmt.Fprintf(w, "allows:     - (known while it is connected)\n")
		} else {
			fmt.Fprintf(w, "allows:     %s\n", allows(a.Allows))
		}
		return nil
	}
	return api.Errorf(api.CodeNotFound, "agent %q is not enrolled", name)
}

func runAgentsList(ctx context.Context, g *globals) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	agents, err := cl.Agents(ctx)
	if err != nil {
		return err
	}
	if g.json {
		if agents == nil {
			agents = []api.Agent{}
		}
		return g.printJSON(agents)
	}
	now := time.Now()
	var rows [][]string
	for _, a := range agents {
		conn := "no"
		if a.Connected {
			conn = "yes"
		}
		if a.Revoked {
			conn = "revoked"
		}
		rows = append(rows, []string{a.Name, a.ID, orDash(a.Address), orDash(a.Version), orDash(a.Platform), fmtAgo(a.LastSeen, now), conn, allows(a.Allows)})
	}
	table(g.stdout, []string{"NAME", "ID", "ADDRESS", "VERSION", "PLATFORM", "LAST SEEN", "CONNECTED", "ALLOWS"}, rows)
	return nil
}

func newInventoryCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "inventory AGENT", Short: "Disks and VM disk files the agent can protect", Args: exactArgs(1, "AGENT"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			items, err := cl.Inventory(c.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				if items == nil {
					items = []api.InventoryItem{}
				}
				return g.printJSON(items)
			}
			var rows [][]string
			for _, it := range items {
				rows = append(rows, []string{it.Path, it.Kind, it.Format, api.FormatSize(it.Size), orDash(it.Note)})
			}
			table(g.stdout, []string{"PATH", "KIND", "FORMAT", "SIZE", "NOTE"}, rows)
			return nil
		},
	}
}

func runAgentsUpgrade(ctx context.Context, g *globals, req api.UpgradeRequest) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	res, err := cl.UpgradeAgents(ctx, req)
	if err != nil {
		return err
	}
	if g.json {
		if res == nil {
			res = []api.UpgradeResult{}
		}
		if err := g.printJSON(res); err != nil {
			return err
		}
	} else {
		var rows [][]string
		for _, r := range res {
			rows = append(rows, []string{r.Agent, orDash(r.FromVersion), orDash(r.ToVersion), r.State, orDash(r.Error)})
		}
		table(g.stdout, []string{"AGENT", "FROM", "TO", "STATE", "ERROR"}, rows)
	}
	failed := 0
	for _, r := range res {
		if r.State == "failed" || r.State == "rolled-back" {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d agent(s) not upgraded", failed)
	}
	return nil
}

// allows names what an agent lets the controller run: "-" when unknown
// (not connected), "none", or plan-scripts and exec-drivers.
func allows(p *api.AgentPermissions) string {
	if p == nil {
		return "-"
	}
	var out []string
	if p.PlanScripts {
		out = append(out, "plan-scripts")
	}
	if p.ExecDrivers {
		out = append(out, "exec-drivers")
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ",")
}
