package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/api"
)

type tokenCreateOptions struct {
	ttl            string
	uses           int
	installCommand bool
	controller     string
}

func newTokensCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "tokens", Short: "Enrolment tokens: create, list, revoke"}
	var o tokenCreateOptions
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an enrolment token (prints the token alone, or the install one-liners)",
		Long: `Create an enrolment token. An agent presents it once ('ferry-agent enroll' or
'ferry-agent install') to obtain its client certificate. The token carries the
controller's public-key pin, a secret and an expiry.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error { return runTokenCreate(c.Context(), g, o) },
	}
	create.Flags().StringVar(&o.ttl, "ttl", "24h", "how long the token is valid (e.g. 30m, 24h, 7d)")
	create.Flags().IntVar(&o.uses, "uses", 1, "how many agents may enrol with it")
	create.Flags().BoolVar(&o.installCommand, "install-command", false, "print the Linux and Windows install one-liners instead of the bare token")
	create.Flags().StringVar(&o.controller, "controller", "", "HOST:PORT agents should dial (default: the controller's own address)")
	list := &cobra.Command{
		Use: "list", Short: "List tokens", Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error { return runTokenList(c.Context(), g) },
	}
	revoke := &cobra.Command{
		Use: "revoke TOKEN-ID", Short: "Revoke a token", Args: exactArgs(1, "TOKEN-ID"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			return cl.RevokeToken(c.Context(), args[0])
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func runTokenCreate(ctx context.Context, g *globals, o tokenCreateOptions) error {
	ttl, err := api.ParseDuration(o.ttl)
	if err != nil {
		return usagef("--ttl: %v", err)
	}
	if o.uses < 1 {
		return usagef("--uses must be at least 1")
	}
	cl, err := g.client()
	if err != nil {
		return err
	}
	t, err := cl.CreateToken(ctx, api.CreateTokenRequest{TTL: ttl, Uses: o.uses, InstallCommand: o.installCommand, Controller: o.controller})
	if err != nil {
		return err
	}
	switch {
	case g.json:
		return g.printJSON(t)
	case o.installCommand:
		for _, c := range t.Commands {
			fmt.Fprintln(g.stdout, c)
		}
	default:
		fmt.Fprintln(g.stdout, t.Token)
	}
	return nil
}

func runTokenList(ctx context.Context, g *globals) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	toks, err := cl.Tokens(ctx)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(toks)
	}
	now := time.Now()
	var rows [][]string
	for _, t := range toks {
		state := "valid"
		switch {
		case t.Revoked:
			state = "revoked"
		case t.Used >= t.Uses:
			state = "used"
		case !now.Before(t.Expires):
			state = "expired"
		}
		rows = append(rows, []string{t.ID, state, strconv.Itoa(t.Used) + "/" + strconv.Itoa(t.Uses), fmtTime(t.Created), fmtTime(t.Expires)})
	}
	table(g.stdout, []string{"ID", "STATE", "USED", "CREATED", "EXPIRES"}, rows)
	return nil
}
