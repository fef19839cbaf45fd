package main

import (
	"context"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ferrydr/ferry/controller/api"
)

// policyFlags are the tunables of create and update; empty = not given.
type policyFlags struct {
	rpEvery, appEvery, retention, rpoThreshold, bandwidth, blockSize string
}

func (p *policyFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&p.rpEvery, "rp-every", "", "crash-consistent point frequency (default 30s)")
	fs.StringVar(&p.appEvery, "app-every", "", "app-consistent point frequency (default 1h)")
	fs.StringVar(&p.retention, "retention", "", "how long points are kept (default 24h)")
	fs.StringVar(&p.rpoThreshold, "rpo-threshold", "", "RPO past which the machine's health turns critical and rpo-breach alerts fire (default 5m)")
	fs.StringVar(&p.bandwidth, "bandwidth", "", "replication bandwidth limit per machine, e.g. 100MiB/s (default unlimited; 0 = unlimited)")
	fs.StringVar(&p.blockSize, "block-size", "", "block size, 4KiB to 1MiB, a power of two (default 64KiB; fixed for a machine once protected)")
}

// update parses the given flags into an update.
func (p *policyFlags) update() (api.PolicyUpdate, error) {
	var u api.PolicyUpdate
	dur := func(s, name string) (*api.Duration, error) {
		if s == "" {
			return nil, nil
		}
		d, err := api.ParseDuration(s)
		if err != nil {
			return nil, usagef("--%s: %v", name, err)
		}
		if d <= 0 && name != "retention" {
			return nil, usagef("--%s must be positive", name)
		}
		return &d, nil
	}
	var err error
	if u.RPEvery, err = dur(p.rpEvery, "rp-every"); err != nil {
		return u, err
	}
	if u.AppEvery, err = dur(p.appEvery, "app-every"); err != nil {
		return u, err
	}
	if u.Retention, err = dur(p.retention, "retention"); err != nil {
		return u, err
	}
	if u.RPOThreshold, err = dur(p.rpoThreshold, "rpo-threshold"); err != nil {
		return u, err
	}
	if p.bandwidth != "" {
		r, err := api.ParseRate(p.bandwidth)
		if err != nil {
			return u, usagef("--bandwidth: %v", err)
		}
		u.Bandwidth = &r
	}
	if p.blockSize != "" {
		s, err := api.ParseSize(p.blockSize)
		if err != nil {
			return u, usagef("--block-size: %v", err)
		}
		if s < 4<<10 || s > 1<<20 || s&(s-1) != 0 {
			return u, usagef("--block-size must be a power of two from 4KiB to 1MiB, not %s", p.blockSize)
		}
		bs := int(s)
		u.BlockSize = &bs
	}
	return u, nil
}

func newPoliciesCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "policies", Short: "Replication policies: create, update, list, delete"}
	var cf, uf policyFlags
	create := &cobra.Command{
		Use: "create NAME", Short: "Create a policy (defaults: --rp-every 30s --app-every 1h --retention 24h --rpo-threshold 5m)",
		Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error { return runPolicyCreate(c.Context(), g, args[0], cf) },
	}
	cf.register(create.Flags())
	update := &cobra.Command{
		Use: "update NAME", Short: "Change the given settings of a policy", Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error { return runPolicyUpdate(c.Context(), g, args[0], uf) },
	}
	uf.register(update.Flags())
	list := &cobra.Command{
		Use: "list", Short: "List policies", Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error { return runPolicyList(c.Context(), g) },
	}
	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a policy no machine uses", Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			return cl.DeletePolicy(c.Context(), args[0])
		},
	}
	cmd.AddCommand(create, update, list, del)
	return cmd
}

func runPolicyCreate(ctx context.Context, g *globals, name string, f policyFlags) error {
	u, err := f.update()
	if err != nil {
		return err
	}
	p := api.DefaultPolicy(name)
	u.Apply(&p)
	cl, err := g.client()
	if err != nil {
		return err
	}
	p, err = cl.CreatePolicy(ctx, p)
	if err != nil {
		return err
	}
	return printPolicies(g, []api.Policy{p})
}

func runPolicyUpdate(ctx context.Context, g *globals, name string, f policyFlags) error {
	u, err := f.update()
	if err != nil {
		return err
	}
	cl, err := g.client()
	if err != nil {
		return err
	}
	p, err := cl.UpdatePolicy(ctx, name, u)
	if err != nil {
		return err
	}
	return printPolicies(g, []api.Policy{p})
}

func runPolicyList(ctx context.Context, g *globals) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	ps, err := cl.Policies(ctx)
	if err != nil {
		return err
	}
	return printPolicies(g, ps)
}

func printPolicies(g *globals, ps []api.Policy) error {
	if g.json {
		if ps == nil {
			ps = []api.Policy{}
		}
		return g.printJSON(ps)
	}
	var rows [][]string
	for _, p := range ps {
		bw := "unlimited"
		if p.Bandwidth > 0 {
			bw = api.FormatSize(p.Bandwidth) + "/s"
		}
		rows = append(rows, []string{p.Name, p.RPEvery.String(), p.AppEvery.String(), p.Retention.String(), p.RPOThreshold.String(), bw, api.FormatSize(int64(p.BlockSize))})
	}
	table(g.stdout, []string{"NAME", "RP EVERY", "APP EVERY", "RETENTION", "RPO THRESHOLD", "BANDWIDTH", "BLOCK SIZE"}, rows)
	return nil
}
