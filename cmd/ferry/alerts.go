package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/api"
)

func newAlertsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "alerts", Short: "Webhook alerts: RPO breaches, failed jobs, lost agents, low disk"}
	var webhook string
	var on []string
	add := &cobra.Command{
		Use:   "add NAME --webhook URL",
		Short: "Send the chosen events to a webhook (all events without --on)",
		Long: `Add an alert rule: each event it is subscribed to is POSTed to the webhook as
JSON (docs/observability.md). rpo-breach, agent-lost and disk-low fire once
when an incident opens and once ("resolved") when it clears; job-failed and
drill-failed fire once per job. A refused or failed delivery is retried with
doubling waits; 'alerts list' shows the failures.`,
		Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			if webhook == "" {
				return usagef("--webhook URL is required")
			}
			var events []string
			for _, e := range on {
				for _, x := range strings.Split(e, ",") {
					if x = strings.TrimSpace(x); x != "" {
						events = append(events, x)
					}
				}
			}
			for _, e := range events {
				if !slices.Contains(api.AlertEvents, e) {
					return usagef("--on %q: want a comma-separated list of %s", e, strings.Join(api.AlertEvents, ", "))
				}
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			a, err := cl.CreateAlert(c.Context(), api.AlertRule{Name: args[0], Webhook: webhook, On: events})
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(a)
			}
			fmt.Fprintf(g.stdout, "alert %s sends %s to %s\n", a.Name, strings.Join(a.On, ","), a.Webhook)
			return nil
		},
	}
	add.Flags().StringVar(&webhook, "webhook", "", "URL the JSON notifications are POSTed to (http or https)")
	add.Flags().StringSliceVar(&on, "on", nil, "events to send: "+strings.Join(api.AlertEvents, ",")+" (default all)")
	_ = add.RegisterFlagCompletionFunc("on", cobra.FixedCompletions(api.AlertEvents, cobra.ShellCompDirectiveNoFileComp))
	list := &cobra.Command{
		Use: "list", Short: "List alert rules and how their deliveries went", Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error { return runAlertsList(c.Context(), g) },
	}
	show := &cobra.Command{
		Use: "show NAME", Short: "Show an alert rule and its delivery status", Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			a, err := cl.Alert(c.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(a)
			}
			st := a.Status
			rows := [][]string{
				{"name", a.Name}, {"webhook", a.Webhook}, {"on", strings.Join(a.On, ",")}, {"created", fmtTime(a.Created)},
				{"sent", strconv.FormatInt(st.Sent, 10)}, {"failed attempts", strconv.FormatInt(st.FailedAttempts, 10)},
				{"dropped", strconv.FormatInt(st.Dropped, 10)}, {"pending", strconv.Itoa(st.Pending)},
				{"last sent", fmtTimePtr(st.LastSent)}, {"last error", orDash(st.LastError)}, {"last error at", fmtTimePtr(st.LastErrorAt)},
			}
			for _, r := range rows {
				fmt.Fprintf(g.stdout, "%-16s %s\n", r[0]+":", r[1])
			}
			return nil
		},
	}
	remove := &cobra.Command{
		Use: "remove NAME", Short: "Remove an alert rule", Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			return cl.RemoveAlert(c.Context(), args[0])
		},
	}
	test := &cobra.Command{
		Use: "test NAME", Short: "Send a test notification now and say whether the webhook accepted it", Args: exactArgs(1, "NAME"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			a, err := cl.TestAlert(c.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(a)
			}
			fmt.Fprintf(g.stdout, "test notification delivered to %s\n", a.Webhook)
			return nil
		},
	}
	cmd.AddCommand(add, list, show, remove, test)
	return cmd
}

func runAlertsList(ctx context.Context, g *globals) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	as, err := cl.Alerts(ctx)
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(as)
	}
	var rows [][]string
	for _, a := range as {
		st := a.Status
		rows = append(rows, []string{a.Name, strings.Join(a.On, ","), a.Webhook, strconv.FormatInt(st.Sent, 10),
			strconv.FormatInt(st.FailedAttempts, 10), strconv.FormatInt(st.Dropped, 10), strconv.Itoa(st.Pending), orDash(st.LastError)})
	}
	table(g.stdout, []string{"NAME", "ON", "WEBHOOK", "SENT", "FAILED", "DROPPED", "PENDING", "LAST ERROR"}, rows)
	return nil
}

func fmtTimePtr(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return fmtTime(*t)
}
