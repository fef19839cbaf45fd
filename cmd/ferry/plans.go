package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/api"
)

func newPlansCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plans",
		Short: "Recovery plans: machines in ordered groups, with actions before and after each group",
		Long: `A recovery plan moves applications, not single machines: its groups move in
order (group 1 first), the machines of a group move in parallel, and each group
has pre and post actions — a script run on the controller or on an agent that
allows plan scripts, or a manual step the job waits on until 'ferry jobs
resume'. Groups are numbered from 1 in the order they were added. A machine
belongs to one group of a plan. Plans can also be kept as YAML files: see
'ferry plans apply' and 'ferry plans export'.`,
	}
	create := &cobra.Command{
		Use: "create PLAN", Short: "Create an empty plan", Args: exactArgs(1, "PLAN"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			p, err := cl.CreatePlan(c.Context(), api.Plan{Name: args[0]})
			if err != nil {
				return err
			}
			return printPlan(g, p)
		},
	}
	list := &cobra.Command{
		Use: "list", Short: "List plans", Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error { return runPlanList(c.Context(), g) },
	}
	show := &cobra.Command{
		Use: "show PLAN", Short: "Show a plan's groups, machines and actions", Args: exactArgs(1, "PLAN"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			p, err := cl.Plan(c.Context(), args[0])
			if err != nil {
				return err
			}
			return printPlan(g, p)
		},
	}
	del := &cobra.Command{
		Use: "delete PLAN", Short: "Delete a plan (its machines stay protected)", Args: exactArgs(1, "PLAN"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			if err := cl.DeletePlan(c.Context(), args[0]); err != nil {
				return err
			}
			if !g.json {
				fmt.Fprintf(g.stdout, "deleted plan %s\n", args[0])
			}
			return nil
		},
	}
	addGroup := &cobra.Command{
		Use:   "add-group PLAN [MACHINE…]",
		Short: "Add a group after the last one (numbered from 1 in order of creation)",
		Long: `Add a group after the plan's last group, holding the machines named. Groups are
numbered from 1 in the order they are added and move in that order; the machines
of a group move in parallel. Each machine must be protected and in no other group
of the plan. A group may also hold only actions.`,
		Args: minArgs(1, "PLAN [MACHINE…]"),
		RunE: func(c *cobra.Command, args []string) error {
			return editPlan(c.Context(), g, args[0], api.PlanEdit{Op: api.PlanAddGroup, Machines: args[1:]})
		},
	}
	var addGroupN int
	var addIPs []string
	addMachine := &cobra.Command{
		Use: "add-machine PLAN --group N MACHINE… [--ip NIC=ADDR/PREFIX[,GATEWAY]]…", Short: "Add machines to a group of a plan",
		Long: `Add machines to a group of a plan. --ip (repeatable; with one MACHINE) gives the
machine its addresses at a failover or test failover of this plan, in the form
protect's --ip takes: for each NIC it names it overrides the machine's own
(protect --ip); the machine's other NICs keep theirs. The driver applies them
where the platform allows (docs/drivers.md, re-IP).`,
		Args: minArgs(2, "PLAN and at least one MACHINE"),
		RunE: func(c *cobra.Command, args []string) error {
			if addGroupN < 1 {
				return usagef("--group N is required (groups count from 1)")
			}
			ips, err := parsePlanIPs(addIPs)
			if err != nil {
				return err
			}
			if len(ips) > 0 && len(args) != 2 {
				return usagef("--ip is one machine's: add the machines one at a time")
			}
			return editPlan(c.Context(), g, args[0], api.PlanEdit{Op: api.PlanAddMachine, Group: addGroupN, Machines: args[1:], IPs: ips})
		},
	}
	addMachine.Flags().IntVar(&addGroupN, "group", 0, "the group's number (from 1)")
	addMachine.Flags().StringArrayVar(&addIPs, "ip", nil, "re-IP a NIC at this plan's failovers: NIC=ADDR/PREFIX[,GATEWAY] (repeatable; overrides protect --ip for that NIC)")
	removeMachine := &cobra.Command{
		Use: "remove-machine PLAN MACHINE", Short: "Remove a machine from its group of a plan (the group stays, numbers do not change)",
		Args: exactArgs(2, "PLAN MACHINE"),
		RunE: func(c *cobra.Command, args []string) error {
			return editPlan(c.Context(), g, args[0], api.PlanEdit{Op: api.PlanRemoveMachine, Machines: args[1:]})
		},
	}
	cmd.AddCommand(create, list, show, del, addGroup, addMachine, removeMachine, newPlanAddActionCommand(g),
		newPlanApplyCommand(g), newPlanExportCommand(g))
	return cmd
}

// actionFlags are add-action's flags.
type actionFlags struct {
	group            int
	pre, post        bool
	script, on, undo string
	timeout          string
	manual           string
}

func newPlanAddActionCommand(g *globals) *cobra.Command {
	var f actionFlags
	cmd := &cobra.Command{
		Use:   "add-action PLAN --group N --pre|--post (--script CMD [--on AGENT] [--timeout D] [--undo CMD] | --manual TEXT)",
		Short: "Add a script or manual action before (--pre) or after (--post) a group moves",
		Long: `Add an action to a group, run before (--pre) or after (--post) the group's machines
move; a group's actions of one phase run in the order they were added.

--script CMD runs CMD through the shell on the controller, or with --on AGENT on
that agent (which must have been installed, enrolled or run with
--allow-plan-scripts), with the FERRY_* environment (FERRY_JOB, FERRY_KIND,
FERRY_PLAN, FERRY_GROUP, FERRY_PHASE, …). It fails on a non-zero exit or after
--timeout (default 5m); its output is kept in the job. --undo CMD runs when a
planned failover rolls back after the script ran.

--manual TEXT puts the job in 'waiting', showing TEXT, until 'ferry jobs resume'.`,
		Args: exactArgs(1, "PLAN"),
		RunE: func(c *cobra.Command, args []string) error {
			e, err := f.edit()
			if err != nil {
				return err
			}
			return editPlan(c.Context(), g, args[0], e)
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&f.group, "group", 0, "the group's number (from 1)")
	fs.BoolVar(&f.pre, "pre", false, "run before the group's machines move")
	fs.BoolVar(&f.post, "post", false, "run after the group's machines move")
	fs.StringVar(&f.script, "script", "", "command to run through the shell")
	fs.StringVar(&f.on, "on", "", "agent to run the script on (default: the controller)")
	fs.StringVar(&f.timeout, "timeout", "", "the script's time limit (default 5m)")
	fs.StringVar(&f.undo, "undo", "", "command that undoes the script when a planned failover rolls back")
	fs.StringVar(&f.manual, "manual", "", "text of a manual step the job waits on until 'ferry jobs resume'")
	return cmd
}

// edit checks the flag combination (usage errors, exit 2) and builds the edit.
func (f actionFlags) edit() (api.PlanEdit, error) {
	e := api.PlanEdit{Op: api.PlanAddAction, Group: f.group}
	switch {
	case f.group < 1:
		return e, usagef("--group N is required (groups count from 1)")
	case f.pre == f.post:
		return e, usagef("give one of --pre and --post")
	case (f.script == "") == (f.manual == ""):
		return e, usagef("give one of --script and --manual")
	case f.manual != "" && (f.on != "" || f.timeout != "" || f.undo != ""):
		return e, usagef("--on, --timeout and --undo go with --script, not --manual")
	}
	e.Phase = api.PhasePre
	if f.post {
		e.Phase = api.PhasePost
	}
	a := api.PlanAction{Script: f.script, On: f.on, Undo: f.undo, Manual: f.manual}
	if f.timeout != "" {
		d, err := api.ParseDuration(f.timeout)
		if err != nil {
			return e, usagef("--timeout: %v", err)
		}
		if d <= 0 {
			return e, usagef("--timeout must be positive")
		}
		a.Timeout = d
	}
	e.Action = &a
	return e, nil
}

func editPlan(ctx context.Context, g *globals, name string, e api.PlanEdit) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	p, err := cl.EditPlan(ctx, name, e)
	if err != nil {
		return err
	}
	return printPlan(g, p)
}

func runPlanList(ctx context.Context, g *globals) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	ps, err := cl.Plans(ctx)
	if err != nil {
		return err
	}
	if g.json {
		if ps == nil {
			ps = []api.Plan{}
		}
		return g.printJSON(ps)
	}
	var rows [][]string
	for _, p := range ps {
		rows = append(rows, []string{p.Name, strconv.Itoa(len(p.Groups)), orDash(strings.Join(p.Members(), ",")), strconv.Itoa(p.Actions())})
	}
	table(g.stdout, []string{"NAME", "GROUPS", "MACHINES", "ACTIONS"}, rows)
	return nil
}

// printPlan shows a plan group by group, each action on its own line.
func printPlan(g *globals, p api.Plan) error {
	if g.json {
		return g.printJSON(p)
	}
	w := g.stdout
	fmt.Fprintf(w, "plan %s: %d groups, %d machines, %d actions\n", p.Name, len(p.Groups), len(p.Members()), p.Actions())
	for _, gr := range p.Groups {
		ms := "no machines"
		if len(gr.Machines) > 0 {
			ms = strings.Join(gr.Machines, ", ")
		}
		fmt.Fprintf(w, "group %d: %s\n", gr.Number, ms)
		for _, m := range gr.Machines {
			if ips := gr.IPsOf(m); len(ips) > 0 {
				fmt.Fprintf(w, "  re-IP %s: %s\n", m, api.FormatNICAddresses(ips))
			}
		}
		for i, a := range gr.Pre {
			fmt.Fprintf(w, "  pre  %d. %s\n", i+1, a.Describe())
		}
		for i, a := range gr.Post {
			fmt.Fprintf(w, "  post %d. %s\n", i+1, a.Describe())
		}
	}
	return nil
}

// parsePlanIPs reads --ip flags with protect's parser and checks each
// address's form (the NIC against the machine's is the controller's check).
func parsePlanIPs(flags []string) ([]api.NICAddress, error) {
	ips, err := parseIPs(flags)
	if err != nil {
		return nil, err
	}
	for _, ip := range ips {
		if err := ip.Check(); err != nil {
			return nil, usagef("%v", err)
		}
	}
	return ips, nil
}

// minArgs is cobra.MinimumNArgs with a usage error.
func minArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) < n {
			return usagef("want %s", what)
		}
		return nil
	}
}
