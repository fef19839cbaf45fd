package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/api"
)

type drillFlags struct {
	machine, plan, every, probe, timeout, target, upMarker string
	port                                                   int
}

func newDrillsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "drills", Short: "Boot drills: prove on a schedule that recovery points boot (points that pass are verified)"}
	var f drillFlags
	create := &cobra.Command{
		Use:   "create NAME --machine M --every D [--probe CMD] [--timeout D] [--target T]",
		Short: "Create a drill: every D, test-fail the newest point over, wait until it is up, probe it, clean up",
		Long: `Create a drill. Every --every, the controller test-fails the machine's newest
point over through the target's driver (a failback test at home for a machine
replicating in reverse), waits until the guest is up (--up-marker on the serial
console of a libvirt target, default "login:"; or --port on the guest's
address), runs --probe on the recovery host's agent (on the controller for an
exec target) with FERRY_DRILL, FERRY_MACHINE, FERRY_POINT, FERRY_TARGET,
FERRY_JOB, FERRY_SET, FERRY_ADDR (the machine's --ip, when given) and
FERRY_CONSOLE (the serial console log, libvirt), then cleans up, always.
A point whose drill passed is verified (ferry points list; --point
latest-verified). A failed drill degrades the machine's health.`,
		Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error { return runDrillCreate(c.Context(), g, args[0], f) },
	}
	fs := create.Flags()
	fs.StringVar(&f.machine, "machine", "", "the machine to drill")
	fs.StringVar(&f.plan, "plan", "", "drill every machine of a recovery plan (not available yet)")
	fs.StringVar(&f.every, "every", "", "interval between runs, at least 1m (e.g. 24h)")
	fs.StringVar(&f.probe, "probe", "", "command that checks the booted guest; exit 0 passes (default: up is enough)")
	fs.StringVar(&f.timeout, "timeout", "", "bound of a run before its cleanup (default 10m)")
	fs.StringVar(&f.target, "target", "", "the target to drill on (default: the machine's)")
	fs.StringVar(&f.upMarker, "up-marker", "", `console text that says the guest is up (default "login:")`)
	fs.IntVar(&f.port, "port", 0, "wait for this TCP port of the guest's address (--ip) instead of a console marker")
	list := &cobra.Command{
		Use: "list", Short: "List drills with their last result and next run", Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error { return runDrillList(c.Context(), g) },
	}
	show := &cobra.Command{
		Use: "show NAME", Short: "Show a drill and the reports of its newest runs (phase times, console tail, probe output)", Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error { return runDrillShow(c.Context(), g, args[0]) },
	}
	var noWait bool
	run := &cobra.Command{
		Use: "run NAME", Short: "Run a drill now and wait for its report (exit 3 when it does not pass)", Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error { return runDrillRun(c.Context(), g, args[0], noWait) },
	}
	run.Flags().BoolVar(&noWait, "no-wait", false, "print the run's id and return")
	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a drill (a run in progress is cancelled and cleaned up) and its reports; points it verified stay verified", Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			return cl.DeleteDrill(c.Context(), args[0])
		},
	}
	cmd.AddCommand(create, list, show, run, del)
	return cmd
}

func runDrillCreate(ctx context.Context, g *globals, name string, f drillFlags) error {
	if f.every == "" {
		return usagef("--every is required (e.g. --every 24h)")
	}
	if f.machine == "" && f.plan == "" {
		return usagef("--machine is required")
	}
	every, err := api.ParseDuration(f.every)
	if err != nil {
		return usagef("--every: %v", err)
	}
	d := api.Drill{Name: name, Machine: f.machine, Plan: f.plan, Every: every, Probe: f.probe, Target: f.target, UpMarker: f.upMarker, Port: f.port}
	if f.timeout != "" {
		if d.Timeout, err = api.ParseDuration(f.timeout); err != nil || d.Timeout <= 0 {
			return usagef("--timeout %q: want a positive duration", f.timeout)
		}
	}
	cl, err := g.client()
	if err != nil {
		return err
	}
	if d, err = cl.CreateDrill(ctx, d); err != nil {
		return err
	}
	return printDrills(g, []api.Drill{d})
}

func runDrillList(ctx context.Context, g *globals) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	ds, err := cl.Drills(ctx)
	if err != nil {
		return err
	}
	return printDrills(g, ds)
}

func printDrills(g *globals, ds []api.Drill) error {
	if g.json {
		if ds == nil {
			ds = []api.Drill{}
		}
		return g.printJSON(ds)
	}
	var rows [][]string
	for _, d := range ds {
		last, next := "-", "-"
		if d.Running {
			last = "running"
		} else if d.LastRun != nil {
			last = fmt.Sprintf("%s (point %d, %s)", d.LastRun.Result, d.LastRun.Point, fmtTime(d.LastRun.Started))
		}
		if d.NextRun != nil {
			next = fmtTime(*d.NextRun)
		}
		rows = append(rows, []string{d.Name, d.Machine, d.Every.String(), orDash(d.Target), last, next})
	}
	table(g.stdout, []string{"NAME", "MACHINE", "EVERY", "TARGET", "LAST RUN", "NEXT RUN"}, rows)
	return nil
}

func runDrillShow(ctx context.Context, g *globals, name string) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	d, err := cl.Drill(ctx, name)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(d)
	}
	w := g.stdout
	fmt.Fprintf(w, "Drill:    %s\nMachine:  %s\nEvery:    %s\nTimeout:  %s\n", d.Drill.Name, d.Drill.Machine, d.Drill.Every, d.Drill.Timeout)
	if d.Drill.Probe != "" {
		fmt.Fprintf(w, "Probe:    %s\n", d.Drill.Probe)
	}
	if d.Drill.Port > 0 {
		fmt.Fprintf(w, "Up when:  port %d accepts\n", d.Drill.Port)
	} else {
		fmt.Fprintf(w, "Up when:  %q on the console\n", d.Drill.UpMarker)
	}
	if d.Drill.NextRun != nil {
		fmt.Fprintf(w, "Next run: %s\n", fmtTime(*d.Drill.NextRun))
	}
	for _, r := range d.Runs {
		printDrillRun(g, r)
	}
	return nil
}

func printDrillRun(g *globals, r api.DrillRun) {
	w := g.stdout
	fmt.Fprintf(w, "\nRun %d: %s, point %d, started %s", r.ID, r.Result, r.Point, fmtTime(r.Started))
	if r.Ended != nil {
		fmt.Fprintf(w, ", %s", r.Ended.Sub(r.Started).Round(time.Second))
	}
	fmt.Fprintln(w)
	if r.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", r.Error)
	}
	var rows [][]string
	for _, p := range r.Phases {
		rows = append(rows, []string{"  " + p.Name, p.Result, strconv.FormatFloat(p.Seconds, 'f', 1, 64) + "s", p.Detail})
	}
	if len(rows) > 0 {
		table(w, []string{"  PHASE", "RESULT", "TIME", "DETAIL"}, rows)
	}
	if len(r.Jobs) > 0 {
		fmt.Fprintf(w, "  jobs: %s\n", strings.Join(r.Jobs, ", "))
	}
	if r.ProbeOutput != "" {
		fmt.Fprintf(w, "  probe output:\n%s\n", indentBlock(r.ProbeOutput))
	}
	if r.ConsoleTail != "" {
		fmt.Fprintf(w, "  console tail:\n%s\n", indentBlock(lastLines(r.ConsoleTail, 20)))
	}
}

func indentBlock(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "    " + strings.TrimRight(l, "\r")
	}
	return strings.Join(lines, "\n")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func runDrillRun(ctx context.Context, g *globals, name string, noWait bool) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	r, err := cl.RunDrill(ctx, name)
	if err != nil {
		return err
	}
	if noWait {
		if g.json {
			return g.printJSON(r)
		}
		fmt.Fprintf(g.stdout, "drill %s: run %d started\n", name, r.ID)
		return nil
	}
	if r, err = waitDrillRun(ctx, cl, name, r.ID); err != nil {
		return err
	}
	if g.json {
		if err := g.printJSON(r); err != nil {
			return err
		}
	} else {
		printDrillRun(g, r)
	}
	if r.Result != api.DrillPassed {
		// Like a failed job (CLI.md exit codes).
		return &exitCodeError{code: exitJobFailed, err: fmt.Errorf("drill %s run %d %s: %s", name, r.ID, r.Result, r.Error)}
	}
	return nil
}

// waitDrillRun polls the drill until the run has ended.
func waitDrillRun(ctx context.Context, cl *admin.Client, name string, id int64) (api.DrillRun, error) {
	for {
		d, err := cl.Drill(ctx, name)
		if err != nil {
			return api.DrillRun{}, err
		}
		for _, r := range d.Runs {
			if r.ID == id && r.Result != api.DrillRunning {
				return r, nil
			}
		}
		select {
		case <-ctx.Done():
			return api.DrillRun{}, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
