package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/admin"
)

// Dynamic shell completion (`ferry completion bash|zsh|fish|powershell`):
// the names a command takes are asked of the controller through the admin
// API, found the way the command itself would find it (--admin, FERRY_ADMIN,
// the default socket). An unreachable controller completes nothing.

// completeTimeout bounds one completion's admin calls, so that a shell does
// not hang on a controller that does not answer.
const completeTimeout = 5 * time.Second

// nameKind is a kind of name the controller can list.
type nameKind int

const (
	machineNames nameKind = iota
	agentNames
	targetNames
	policyNames
	jobIDs
	tokenIDs
	alertNames
	planNames
)

// argKinds: the kind of a command's first argument, by command path.
var argKinds = map[string]nameKind{
	"ferry unprotect":            machineNames,
	"ferry machines show":        machineNames,
	"ferry machines update":      machineNames,
	"ferry points list":          machineNames,
	"ferry points export":        machineNames,
	"ferry points label":         machineNames,
	"ferry points audit":         machineNames,
	"ferry failover":             machineNames,
	"ferry commit":               machineNames,
	"ferry change-point":         machineNames,
	"ferry cleanup":              machineNames,
	"ferry reprotect":            machineNames,
	"ferry failback":             machineNames,
	"ferry revert":               machineNames,
	"ferry verify":               machineNames,
	"ferry inventory":            agentNames,
	"ferry agents revoke":        agentNames,
	"ferry agents remove":        agentNames,
	"ferry agents upgrade":       agentNames,
	"ferry targets remove":       targetNames,
	"ferry policies update":      policyNames,
	"ferry policies delete":      policyNames,
	"ferry jobs show":            jobIDs,
	"ferry jobs watch":           jobIDs,
	"ferry jobs resume":          jobIDs,
	"ferry cancel":               jobIDs,
	"ferry tokens revoke":        tokenIDs,
	"ferry alerts show":          alertNames,
	"ferry alerts remove":        alertNames,
	"ferry alerts test":          alertNames,
	"ferry plans show":           planNames,
	"ferry plans delete":         planNames,
	"ferry plans add-group":      planNames,
	"ferry plans add-machine":    planNames,
	"ferry plans remove-machine": planNames,
	"ferry plans add-action":     planNames,
	"ferry plans export":         planNames,
}

// flagKinds: the kind of a flag's value, by flag name, wherever it appears.
var flagKinds = map[string]nameKind{
	"agent":  agentNames,
	"on":     agentNames,
	"plan":   planNames,
	"target": targetNames,
	"policy": policyNames,
}

// addCompletions sets the completion functions of cmd and its subcommands.
func addCompletions(g *globals, cmd *cobra.Command) {
	if k, ok := argKinds[cmd.CommandPath()]; ok && cmd.ValidArgsFunction == nil {
		cmd.ValidArgsFunction = func(c *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return completeNames(c.Context(), g, k)
		}
	}
	for name, k := range flagKinds {
		if cmd.Flags().Lookup(name) != nil {
			_ = cmd.RegisterFlagCompletionFunc(name, func(c *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
				return completeNames(c.Context(), g, k)
			})
		}
	}
	if cmd.Flags().Lookup("point") != nil {
		_ = cmd.RegisterFlagCompletionFunc("point", func(c *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			return completePoints(c.Context(), g, args)
		})
	}
	for _, sub := range cmd.Commands() {
		addCompletions(g, sub)
	}
}

// completionClient is the admin client and a bounded context for one
// completion; ok is false when there is none to ask.
func completionClient(ctx context.Context, g *globals) (*admin.Client, context.Context, context.CancelFunc, bool) {
	if ctx == nil {
		ctx = context.Background()
	}
	cl, err := g.client()
	if err != nil {
		return nil, nil, nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, completeTimeout)
	return cl, ctx, cancel, true
}

func completeNames(ctx context.Context, g *globals, k nameKind) ([]cobra.Completion, cobra.ShellCompDirective) {
	const none = cobra.ShellCompDirectiveNoFileComp
	cl, ctx, cancel, ok := completionClient(ctx, g)
	if !ok {
		return nil, cobra.ShellCompDirectiveError
	}
	defer cancel()
	var out []cobra.Completion
	switch k {
	case machineNames:
		ms, err := cl.Machines(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		for _, m := range ms {
			out = append(out, cobra.CompletionWithDesc(m.Name, m.State))
		}
	case agentNames:
		as, err := cl.Agents(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		for _, a := range as {
			desc := "disconnected"
			if a.Connected {
				desc = "connected"
			}
			out = append(out, cobra.CompletionWithDesc(a.Name, desc))
		}
	case targetNames:
		ts, err := cl.Targets(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		for _, t := range ts {
			out = append(out, t.Name)
		}
	case policyNames:
		ps, err := cl.Policies(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		for _, p := range ps {
			out = append(out, p.Name)
		}
	case jobIDs:
		js, err := cl.Jobs(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		for _, j := range js {
			out = append(out, cobra.CompletionWithDesc(j.ID, j.Kind+" "+j.State))
		}
	case alertNames:
		as, err := cl.Alerts(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		for _, a := range as {
			out = append(out, cobra.CompletionWithDesc(a.Name, strings.Join(a.On, ",")))
		}
	case planNames:
		ps, err := cl.Plans(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		for _, p := range ps {
			out = append(out, cobra.CompletionWithDesc(p.Name, fmt.Sprintf("%d groups", len(p.Groups))))
		}
	case tokenIDs:
		ts, err := cl.Tokens(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		for _, t := range ts {
			if !t.Revoked {
				out = append(out, cobra.CompletionWithDesc(t.ID, "expires "+t.Expires.Format(time.RFC3339)))
			}
		}
	}
	return out, none
}

// completePoints offers the point specs of the machine named by the first
// argument: the latest* words, then each point's id described by its time
// and name.
func completePoints(ctx context.Context, g *globals, args []string) ([]cobra.Completion, cobra.ShellCompDirective) {
	out := []cobra.Completion{"latest", "latest-processed", "latest-app-consistent", "latest-verified"}
	if len(args) == 0 {
		return out, cobra.ShellCompDirectiveNoFileComp
	}
	cl, ctx, cancel, ok := completionClient(ctx, g)
	if !ok {
		return out, cobra.ShellCompDirectiveNoFileComp
	}
	defer cancel()
	ps, err := cl.Points(ctx, args[0])
	if err != nil {
		return out, cobra.ShellCompDirectiveNoFileComp
	}
	for i := len(ps) - 1; i >= 0; i-- { // newest first
		p := ps[i]
		desc := strings.TrimSpace(fmt.Sprintf("%s %s %s", p.Time.Format(time.RFC3339), p.Consistency, p.Name))
		out = append(out, cobra.CompletionWithDesc(strconv.FormatInt(p.ID, 10), desc))
	}
	return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveKeepOrder
}
