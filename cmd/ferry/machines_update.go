package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferrydr/ferry/controller/api"
)

// updateFlags are the `machines update` flags whose value is taken only
// when given (cobra's Changed): an omitted flag leaves the setting as it is.
type updateFlags struct {
	rename, policy, target             string
	start, stop, pause, resume, status string
	sourceDriver                       string
	home                               homeDriverFlags
	domain, preSnapshot, postSnapshot  string
	freeze, addDisks, removeDisks      []string
	force                              bool
}

func newMachinesUpdateCommand(g *globals) *cobra.Command {
	var o updateFlags
	cmd := &cobra.Command{
		Use:   "update MACHINE [--policy P] [--target T] [--add-disk NAME=PATH]… [--remove-disk NAME]… [driver and snapshot flags] [--rename NEW]",
		Short: "Change a protected machine without resyncing its unchanged disks",
		Long: `Change a protected machine's policy, default target, source driver, snapshot
commands or disks. Unchanged disks keep their block maps: the next cycle
continues from the newest point and sends only what changed.

  --add-disk NAME=PATH   the new disk is checked by the agent and sent alone,
                         in full, by the next cycle
  --remove-disk NAME     new points leave the disk out (earlier points keep it)
  --target T             the new target holds no copy yet: the newest point
                         is staged there in full
  --policy P             a policy of the same block size sends nothing; one of
                         another block size deletes the machine's points and
                         resyncs every disk in full (needs --force)
  --rename NEW           only while the machine runs at home, no job holds it
                         and it has no recovery point yet (its initial sync
                         starts again under the new name)

The driver flags (--start … --status, --driver, its options such as --uri,
--url or --shutdown-timeout, --domain) replace the machine's one by one, as
protect takes them; an empty value (--insecure=false) clears one.
--freeze replaces the list of mount points. A machine is
changed only while it runs at home and replicates forward (syncing or
protected); other states are refused with the reason.`,
		Args: exactArgs(1, "MACHINE"),
		RunE: func(c *cobra.Command, args []string) error {
			return runMachinesUpdate(c.Context(), g, c, args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.rename, "rename", "", "the machine's new name")
	f.StringVar(&o.policy, "policy", "", "the replication policy")
	f.StringVar(&o.target, "target", "", "the default failover target (\"\" for none)")
	f.StringVar(&o.start, "start", "", "command that starts the machine")
	f.StringVar(&o.stop, "stop", "", "command that stops the machine")
	f.StringVar(&o.pause, "pause", "", "command that pauses the machine (writes stop)")
	f.StringVar(&o.resume, "resume", "", "command that resumes a paused machine")
	f.StringVar(&o.status, "status", "", "command that prints running, stopped or absent")
	f.StringVar(&o.sourceDriver, "driver", "", "the home site's driver: exec, libvirt, vsphere or hyperv")
	o.home.add(f)
	f.StringVar(&o.domain, "domain", "", "the machine's name at the home site's hypervisor")
	f.StringVar(&o.preSnapshot, "pre-snapshot", "", "command run before an app-consistent snapshot")
	f.StringVar(&o.postSnapshot, "post-snapshot", "", "command run after an app-consistent snapshot")
	f.StringArrayVar(&o.freeze, "freeze", nil, "a mount point to fsfreeze (repeatable; replaces the list; \"\" clears it)")
	f.StringArrayVar(&o.addDisks, "add-disk", nil, "a disk to add, [NAME=]PATH (repeatable)")
	f.StringArrayVar(&o.removeDisks, "remove-disk", nil, "the name of a disk to stop replicating (repeatable)")
	f.BoolVar(&o.force, "force", false, "allow a change that deletes the machine's points (a block-size change)")
	return cmd
}

func runMachinesUpdate(ctx context.Context, g *globals, c *cobra.Command, machine string, o updateFlags) error {
	req := api.UpdateMachineRequest{Rename: o.rename, Force: o.force, RemoveDisks: o.removeDisks}
	given := func(flag string, v string) *string {
		if c.Flags().Changed(flag) {
			return &v
		}
		return nil
	}
	req.Policy, req.Target = given("policy", o.policy), given("target", o.target)
	req.Start, req.Stop, req.Pause = given("start", o.start), given("stop", o.stop), given("pause", o.pause)
	req.Resume, req.Status = given("resume", o.resume), given("status", o.status)
	req.SourceDriver, req.Domain = given("driver", o.sourceDriver), given("domain", o.domain)
	req.PreSnapshot, req.PostSnapshot = given("pre-snapshot", o.preSnapshot), given("post-snapshot", o.postSnapshot)
	// Source driver options by their flag names, as protect stores them.
	req.SourceOptions = o.home.options(c.Flags().Changed, true)
	if c.Flags().Changed("freeze") {
		fr := []string{} // --freeze "" clears the list
		for _, m := range o.freeze {
			if m != "" {
				fr = append(fr, m)
			}
		}
		req.Freeze = &fr
	}
	if len(o.addDisks) > 0 {
		disks, err := parseDisks(o.addDisks)
		if err != nil {
			return usagef("--add-disk: %v", err)
		}
		req.AddDisks = disks
	}
	nGiven := 0 // flags of this command given (not --admin, --json…)
	c.Flags().Visit(func(f *pflag.Flag) {
		if c.LocalNonPersistentFlags().Lookup(f.Name) != nil {
			nGiven++
		}
	})
	if nGiven == 0 {
		return usagef("nothing to change: give at least one setting (see ferry machines update --help)")
	}
	cl, err := g.client()
	if err != nil {
		return err
	}
	res, err := cl.UpdateMachine(ctx, machine, req)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(res)
	}
	m := res.Machine
	fmt.Fprintf(g.stdout, "updated %s: policy %s, target %s, %d disk(s); state %s\n", m.Name, m.Policy, orDash(m.Target), len(m.Disks), m.State)
	for _, n := range res.Notes {
		fmt.Fprintf(g.stdout, "  %s\n", n)
	}
	return nil
}
