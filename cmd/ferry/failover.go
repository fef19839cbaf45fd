package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/points"
)

// jobFlags are shared by every job-starting command.
type jobFlags struct {
	wait bool
	plan string
}

func (j *jobFlags) register(c *cobra.Command, withPlan bool) {
	c.Flags().BoolVar(&j.wait, "wait", false, "follow the job to its end and exit with its outcome (0 succeeded, 3 failed, 4 partial)")
	if withPlan {
		c.Flags().StringVar(&j.plan, "plan", "", "a recovery plan instead of one machine")
	}
}

// target returns the machine argument or the plan, refusing both or neither.
func (j *jobFlags) target(args []string) (string, error) {
	switch {
	case j.plan != "" && len(args) > 0:
		return "", usagef("give MACHINE or --plan, not both")
	case j.plan == "" && len(args) != 1:
		return "", usagef("give one MACHINE (or --plan PLAN)")
	}
	if len(args) == 1 {
		return args[0], nil
	}
	return "", nil
}

type failoverOptions struct {
	jobFlags
	req     api.FailoverRequest
	keyFile string
	timeout string
}

func newFailoverCommand(g *globals) *cobra.Command {
	var o failoverOptions
	cmd := &cobra.Command{
		Use:   "failover MACHINE|--plan PLAN [--target NAME] [--point SPEC] [--test] [--planned] [--shutdown-source] …",
		Short: "Fail a machine over to its recovery site (or test it, or plan it with zero data loss)",
		Long: `Fail over: bring a machine up at its target from a recovery point.

  --point SPEC   latest (default: a fresh cycle first if the source is
                 reachable, else the newest complete point), latest-processed
                 (the newest point, no processing), latest-app-consistent,
                 latest-verified (the newest point a drill booted and probed),
                 a point id, or an RFC 3339 time (the newest point at or before it)
  --test         a test failover: clones of the staged disks, started isolated
                 (FERRY_TEST=1) under a test name while replication goes on;
                 end it with 'ferry cleanup'
  --planned      zero data loss: stop the source, take a final cycle, fail
                 over to it; any failure before the final point restarts the source
  --shutdown-source  try to stop the source first; the failover continues if
                 that fails

--plan PLAN     one job for a recovery plan's members that run at home (the
                 others are skipped and listed): groups in order, the machines
                 of a group in parallel, pre/post actions; a manual action waits
                 for 'ferry jobs resume JOB'. Unplanned: runs to its end and ends
                 partial (exit 4) if some machines failed. --planned: stops the
                 sources in reverse group order and moves every disk first; a
                 failure there rolls everything back. With --dry-run: each
                 member's point, target and free space, and the actions.

--direction reverse is exactly 'ferry failback --unplanned' (to --point
                 when given): the machine moves home to a point of the reverse
                 replication; see 'ferry failback --help'.

A failover of a machine under a drill or a test failover cancels the drill,
cleans the test up, and proceeds; the job notes it.

The command prints the job id; with --wait it follows the job and exits with
its outcome. 'ferry cancel JOB --force' rolls the target back.`,
		RunE: func(c *cobra.Command, args []string) error { return runFailover(c.Context(), g, o, args) },
	}
	f := cmd.Flags()
	o.register(cmd, true)
	f.StringVar(&o.req.Target, "target", "", "the target (default: the machine's)")
	f.StringVar(&o.req.Point, "point", "", "which point (see above)")
	f.BoolVar(&o.req.Test, "test", false, "test failover")
	f.BoolVar(&o.req.Planned, "planned", false, "planned failover (zero data loss)")
	f.BoolVar(&o.req.ShutdownSource, "shutdown-source", false, "try to shut the source down first")
	f.StringVar(&o.req.Direction, "direction", "forward", "forward (home to the recovery site) or reverse (exactly 'ferry failback --unplanned')")
	f.StringVar(&o.keyFile, "key-file", "", "the repository's private key file (encrypted repositories)")
	f.BoolVar(&o.req.AllowInconsistent, "allow-inconsistent", false, "accept a point labelled inconsistent")
	f.BoolVar(&o.req.AllowDamaged, "allow-damaged", false, "accept a point that reads data the point audit found damaged")
	f.BoolVar(&o.req.DryRun, "dry-run", false, "check the prerequisites only; touch nothing")
	f.StringVar(&o.timeout, "timeout", "", "give up retrying after this long (default 30m)")
	return cmd
}

func runFailover(ctx context.Context, g *globals, o failoverOptions, args []string) error {
	machine, err := o.target(args)
	if err != nil {
		return err
	}
	switch {
	case o.req.Test && (o.req.Planned || o.req.ShutdownSource):
		return usagef("--test cannot be combined with --planned or --shutdown-source")
	case o.req.Planned && o.req.Point != "":
		return usagef("--planned always fails over to the final point: --point cannot be given")
	}
	if err := points.CheckSpec(o.req.Point); err != nil {
		return usagef("--point: %v", err)
	}
	if err := planPoint(o.plan, o.req.Point); err != nil {
		return err
	}
	o.req.Machine, o.req.Plan = machine, o.plan
	if o.timeout != "" {
		d, err := api.ParseDuration(o.timeout)
		if err != nil {
			return usagef("--timeout: %v", err)
		}
		o.req.Timeout = d
	}
	if o.keyFile != "" {
		if o.req.Key, err = os.ReadFile(o.keyFile); err != nil {
			return fmt.Errorf("--key-file: %w", err)
		}
	}
	fb, reverse, err := api.ReverseFailover(o.req)
	if err != nil {
		return usagef("%v", err)
	}
	cl, err := g.client()
	if err != nil {
		return err
	}
	if reverse {
		// Exactly 'ferry failback --unplanned' (CLI.md).
		j, err := cl.MachineAction(ctx, "failback", fb)
		if err != nil {
			return err
		}
		return followJob(ctx, g, j, o.wait)
	}
	j, err := cl.Failover(ctx, o.req)
	if err != nil {
		return err
	}
	if o.req.DryRun {
		return printDryRun(g, j)
	}
	return followJob(ctx, g, j, o.wait)
}

// printDryRun shows what a failover would do: its checks passed, and the
// point it would use. A dry run is not a job: nothing is recorded.
func printDryRun(g *globals, j api.Job) error {
	if g.json {
		return g.printJSON(j)
	}
	if j.Plan != "" {
		printPlanDryRun(g, j)
		return nil
	}
	for _, m := range j.Machines {
		fmt.Fprintf(g.stdout, "dry run: %s of %s would use point %d\n", j.Kind, m.Name, m.PointID)
		for _, n := range m.Notes {
			fmt.Fprintf(g.stdout, "  %s\n", n)
		}
	}
	fmt.Fprintln(g.stdout, "the prerequisites are met; nothing was changed and no job was recorded")
	return nil
}

// newActionCommand builds commit, cleanup and change-point.
func newActionCommand(g *globals, verb, short string, needsPoint bool) *cobra.Command {
	var j jobFlags
	var point, keyFile string
	var force bool
	destructive := verb == "commit" // deletes recovery points
	var allowDamaged bool
	cmd := &cobra.Command{
		Use:   verb + " MACHINE|--plan PLAN",
		Short: short,
		RunE: func(c *cobra.Command, args []string) error {
			machine, err := j.target(args)
			if err != nil {
				return err
			}
			if needsPoint && point == "" {
				return usagef("--point is required")
			}
			if err := points.CheckSpec(point); err != nil {
				return usagef("--point: %v", err)
			}
			if err := planPoint(j.plan, point); err != nil {
				return err
			}
			req := api.MachineActionRequest{Machine: machine, Plan: j.plan, Point: point, AllowDamaged: allowDamaged}
			if keyFile != "" {
				if req.Key, err = os.ReadFile(keyFile); err != nil {
					return fmt.Errorf("--key-file: %w", err)
				}
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			if destructive && !force {
				if machine == "" {
					return forceRefusal(verb + " --plan deletes the recovery points of every machine of the plan")
				}
				return refuseCommit(c.Context(), g, cl, machine)
			}
			job, err := cl.MachineAction(c.Context(), verb, req)
			if err != nil {
				return err
			}
			return followJob(c.Context(), g, job, j.wait)
		},
	}
	j.register(cmd, true)
	if destructive {
		cmd.Use = verb + " MACHINE|--plan PLAN --force"
		cmd.Long = short + `.

Commit deletes recovery points, so it needs --force. Without it nothing
changes: it prints the points it would delete (id, time, consistency, size,
name) and the ones it keeps (the point the machine runs, the newest, and
recovery-divergent ones), and exits 2 with an error naming --force.`
		cmd.Flags().BoolVar(&force, "force", false, "really delete the recovery points (without it: list what would be deleted)")
	}
	if needsPoint {
		cmd.Flags().StringVar(&point, "point", "", "the point to move to")
		cmd.Flags().StringVar(&keyFile, "key-file", "", "the repository's private key file (encrypted repositories)")
		cmd.Flags().BoolVar(&allowDamaged, "allow-damaged", false, "accept a point that reads data the point audit found damaged")
	}
	return cmd
}

func newCancelCommand(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "cancel JOB-ID --force",
		Short: "Stop a job at a step boundary and roll the target back",
		Long: `Cancel a running job. It stops at the next step boundary; a failover's
target is rolled back (the machine there is stopped and removed, the staged
disks return to their last point) and replication of the source restarts with
a hash resync. --force is required: cancelling a failover undoes it. A job
running its last step has no boundary left to stop at: cancelling it is
refused with the reason (undo its result with the machine's allowed actions).`,
		Args: exactArgs(1, "JOB-ID"),
		RunE: func(c *cobra.Command, args []string) error {
			if !force {
				return usagef("cancelling undoes the job's work: add --force")
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			j, err := cl.CancelJob(c.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(j)
			}
			fmt.Fprintf(g.stdout, "job %s will stop at its next step boundary and roll back\n", j.ID)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "really cancel")
	return cmd
}

// followJob prints the job id, or with wait follows it to its end and
// returns its outcome as an exit code.
func followJob(ctx context.Context, g *globals, j api.Job, wait bool) error {
	if !wait {
		if g.json {
			return g.printJSON(j)
		}
		fmt.Fprintln(g.stdout, j.ID)
		return nil
	}
	cl, err := g.client()
	if err != nil {
		return err
	}
	last := j
	printed := map[string]string{}
	out := newProgressOut(g.stdout)
	waiting := ""
	err = cl.WatchJob(ctx, j.ID, func(s api.Job) error {
		last = s
		if g.json {
			return nil
		}
		if s.Waiting != nil && s.Waiting.Text != waiting {
			waiting = s.Waiting.Text
			out.println("%s  waiting on a manual action: %s (continue with: ferry jobs resume %s)", j.ID, waiting, j.ID)
		}
		for _, st := range s.Steps {
			// Data moving: a bar on a terminal, a line per tenth elsewhere.
			if out.step(fmt.Sprintf("%s  %-16s", j.ID, st.Name), st, printed[st.Name] == api.StepRunning) {
				printed[st.Name] = st.State
				continue
			}
			if printed[st.Name] != st.State && st.State != api.StepPending {
				printed[st.Name] = st.State
				line := fmt.Sprintf("%s  %-16s %s", j.ID, st.Name, st.State)
				if st.Error != "" {
					line += ": " + st.Error
				}
				out.println("%s", line)
			}
		}
		return nil
	})
	out.finish()
	if err != nil {
		return err
	}
	if g.json {
		if err := g.printJSON(last); err != nil {
			return err
		}
	} else {
		for _, m := range last.Machines {
			fmt.Fprintf(g.stdout, "%s: %s, point %d", m.Name, m.State, m.PointID)
			if m.Error != "" {
				fmt.Fprintf(g.stdout, ": %s", m.Error)
			}
			fmt.Fprintln(g.stdout)
			for _, n := range m.Notes {
				fmt.Fprintf(g.stdout, "  %s\n", n)
			}
		}
		fmt.Fprintf(g.stdout, "job %s %s\n", last.ID, last.State)
	}
	return jobOutcome(last)
}

// jobOutcome maps a finished job to the exit codes of CLI.md.
func jobOutcome(j api.Job) error {
	switch j.State {
	case api.JobSucceeded:
		return nil
	case api.JobPartial:
		return &exitCodeError{code: exitJobPartial, err: fmt.Errorf("job %s ended partial: %s", j.ID, machineErrors(j))}
	case api.JobFailed:
		return &exitCodeError{code: exitJobFailed, err: fmt.Errorf("job %s failed: %s", j.ID, j.Error)}
	case api.JobCancelled:
		return &exitCodeError{code: exitError, err: fmt.Errorf("job %s was cancelled", j.ID)}
	}
	return errors.New("the job is still " + j.State)
}

func machineErrors(j api.Job) string {
	var out []string
	for _, m := range j.Machines {
		if m.Error != "" {
			out = append(out, m.Name+": "+m.Error)
		}
	}
	return strings.Join(out, "; ")
}

// newReprotectCommand builds `ferry reprotect`.
func newReprotectCommand(g *globals) *cobra.Command {
	var j jobFlags
	var req api.MachineActionRequest
	cmd := &cobra.Command{
		Use:   "reprotect MACHINE [--target NAME] [--stop-source | --source-is-off] [--test-dir DIR] [--wait]",
		Short: "Replicate a machine from the site it runs at to the other one (home after a failover, forward after a failback)",
		Long: `Re-protect: after a committed failover, the recovery site's agent becomes
the machine's source and the home disks — where they are: raw images or
block devices, qcow2 or VHDX — its replica, updated in place with only the blocks that differ. What the
home disks held before is kept first as the point home-divergent-JOB.
After a failback, the recovery site's disks become the staged replica
again and replication runs from home.

Split brain: the other side's machine must be stopped. Its driver's
status proves it; --stop-source stops it through the driver first;
--source-is-off declares it off (recorded in the job). A driver without a
status command cannot prove "stopped".

--test-dir DIR (a directory at the home site, recorded with the reverse
replication) is where 'ferry failback M --test' clones the home disks:
reflinks when DIR is on the home disks' filesystem, else a sparse copy.

--target NAME (after a failover): where the home disks cannot or should
not be written in place, replicate into new disks at another raw target
instead (a full copy from the points, kept current); the home disks are
only read. Failback then starts the machine there through that target's
driver, which becomes its home.`,
		RunE: func(c *cobra.Command, args []string) error {
			machine, err := j.target(args)
			if err != nil {
				return err
			}
			if req.StopSource && req.SourceIsOff {
				return usagef("give --stop-source or --source-is-off, not both")
			}
			req.Machine, req.Plan = machine, j.plan
			cl, err := g.client()
			if err != nil {
				return err
			}
			job, err := cl.MachineAction(c.Context(), "reprotect", req)
			if err != nil {
				return err
			}
			return followJob(c.Context(), g, job, j.wait)
		},
	}
	j.register(cmd, true)
	f := cmd.Flags()
	f.StringVar(&req.Target, "target", "", "replicate home into new disks at this (raw) target instead of the home disks, which are only read; failback then starts the machine there (a full copy)")
	f.BoolVar(&req.StopSource, "stop-source", false, "stop the other side's machine through its driver first")
	f.BoolVar(&req.SourceIsOff, "source-is-off", false, "declare the other side's machine off (recorded in the job)")
	f.StringVar(&req.TestDir, "test-dir", "", "directory at the home site where 'failback --test' clones the home disks (absolute)")
	return cmd
}

// newFailbackCommand builds `ferry failback`.
func newFailbackCommand(g *globals) *cobra.Command {
	var j jobFlags
	var req api.MachineActionRequest
	cmd := &cobra.Command{
		Use:   "failback MACHINE [--point SPEC] [--unplanned] [--test] [--stop-source] [--wait]",
		Short: "Bring a machine replicating home back home (planned: zero data loss)",
		Long: `Failback: stop the machine at the recovery site, take a final cycle there,
move the home disks in place to it and start the machine at home through
its driver. No write is lost and no commit is needed; 'ferry reprotect'
then restores replication from home.

Unplanned failback (--point SPEC or --unplanned; never chosen
automatically): no final cycle; the home disks move in place to SPEC, a
point of the reverse replication (--unplanned alone: the newest), and the
machine starts at home. Writes made at the recovery site after that point
are not brought home. The machine ends failed-back: 'ferry change-point'
moves the home disks to another point, 'ferry commit' ends it. A failback
whose recovery site is unreachable is refused unless --unplanned is given;
the copy there is then stopped through its driver when that site's agent
reconnects, before anything else, and its disks are kept as the point
recovery-divergent-JOB ('ferry machines show' shows the fence).

--test stops nothing: it takes a fresh point at the recovery site, clones
the home disks into the --test-dir given at re-protect, moves the clone
to that point and starts it through the home driver as MACHINE-test with
FERRY_TEST=1; the machine at the recovery site runs on and replication
home goes on. 'ferry cleanup MACHINE' stops the test copy and removes the
clone.`,
		RunE: func(c *cobra.Command, args []string) error {
			machine, err := j.target(args)
			if err != nil {
				return err
			}
			if req.Test && (req.Unplanned || req.Point != "" || req.StopSource) {
				return usagef("--test stops nothing and moves nothing home: give it without --point, --unplanned or --stop-source")
			}
			if err := points.CheckSpec(req.Point); err != nil {
				return usagef("--point: %v", err)
			}
			if err := planPoint(j.plan, req.Point); err != nil {
				return err
			}
			req.Machine, req.Plan = machine, j.plan
			cl, err := g.client()
			if err != nil {
				return err
			}
			job, err := cl.MachineAction(c.Context(), "failback", req)
			if err != nil {
				return err
			}
			return followJob(c.Context(), g, job, j.wait)
		},
	}
	j.register(cmd, true)
	f := cmd.Flags()
	f.StringVar(&req.Point, "point", "", "an unplanned failback to this point of the reverse replication (an id, latest, latest-processed, latest-app-consistent or an RFC 3339 time)")
	f.BoolVar(&req.Unplanned, "unplanned", false, "an unplanned failback (to the newest point without --point), also with the recovery site unreachable")
	f.BoolVar(&req.Test, "test", false, "start a clone of the home disks at home (FERRY_TEST=1); stops nothing ('ferry cleanup' ends it)")
	f.BoolVar(&req.StopSource, "stop-source", false, "accepted: a planned failback always stops the machine at the recovery site")
	f.BoolVar(&req.AllowDamaged, "allow-damaged", false, "an unplanned failback may use a point that reads data the point audit found damaged")
	return cmd
}

// planPoint refuses a point id with --plan (exit 2): an id names one
// machine's point; a plan's members share times and latest* specs.
func planPoint(plan, point string) error {
	if plan == "" {
		return nil
	}
	if _, err := strconv.ParseInt(point, 10, 64); err == nil {
		return usagef("--point %s is one machine's point id: with --plan give an RFC 3339 time or latest, latest-processed, latest-app-consistent", point)
	}
	return nil
}
