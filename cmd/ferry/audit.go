package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

func newAuditCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "The audit trail of mutating admin calls"}
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "List audit entries, oldest first: who, what, when and the result",
		Long: `List the audit trail: every mutating admin call (from the CLI over the admin
socket or the TLS admin listener, or from the web console) with who made it
(the socket peer's uid or the admin token's fingerprint), the method and path,
the names it acted on, the request body with secrets removed, the result and
the job it started. Entries are kept in the catalog across restarts.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			if limit < 0 {
				return usagef("--limit must be 0 (all) or more")
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			es, err := cl.AuditLog(c.Context(), limit)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(es)
			}
			var rows [][]string
			for _, e := range es {
				result := e.Result
				if e.Code != "" {
					result += " " + e.Code
				}
				targets := strings.Join(e.Targets, ",")
				if targets == "" {
					targets = "-"
				}
				job := e.Job
				if job == "" {
					job = "-"
				}
				rows = append(rows, []string{fmt.Sprint(e.ID), fmtTime(e.Time), e.Who, e.Via, e.Method + " " + e.Path, targets, result, job})
			}
			table(g.stdout, []string{"ID", "TIME", "WHO", "VIA", "CALL", "TARGETS", "RESULT", "JOB"}, rows)
			return nil
		},
	}
	list.Flags().IntVar(&limit, "limit", 0, "show only the newest N entries (default: all)")
	cmd.AddCommand(list)
	return cmd
}
