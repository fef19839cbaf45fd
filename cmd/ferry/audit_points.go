package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/api"
)

// newPointsAuditCommand is `ferry points audit`: one point-audit pass now
// (the background audit of controller/scrub, on demand). It is not the
// admin audit trail.
func newPointsAuditCommand(g *globals) *cobra.Command {
	var rate string
	cmd := &cobra.Command{
		Use:   "audit [MACHINE] [--rate SIZE]",
		Short: "Re-read every retained point now (the point audit); name damaged points, disks and blocks",
		Long: `Run one pass of the point audit now, over one machine's retained points or
every machine's, and wait for it. Every chunk the points read is read once and
checked (re-hashed; for an encrypted repository its ciphertext checksum), and
every point's index must resolve. Damage is named by point, disk and block; the
damaged data is marked so no cycle deduplicates against it, the affected
machines resync, and their next cycle stores the content again where the source
still has it. Points that read damaged data are listed damaged, skipped by
latest*, and refused by failover without --allow-damaged. 'machines show'
prints when each point was last audited. The controller also audits in the
background (ferry serve --audit-rate, --audit-every); a pass running in the
background is finished first. --rate defaults to the controller's --audit-rate
(unlimited when that is 0).`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usagef("want at most one MACHINE")
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			req := api.AuditRequest{}
			if len(args) == 1 {
				req.Machine = args[0]
			}
			if rate != "" {
				n, err := parseRate(rate)
				if err != nil {
					return usagef("--rate %q: %v", rate, err)
				}
				if n == 0 {
					return usagef("--rate 0: give a rate, or leave --rate out for the controller's")
				}
				req.Rate = n
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			r, err := cl.AuditPoints(c.Context(), req)
			if err != nil {
				return err
			}
			return printDamage(g, r, fmt.Sprintf("audited %d points: %d chunks (%s) in %.1fs", r.Points, r.Chunks, api.FormatSize(r.Bytes), r.Seconds), r.Damaged)
		},
	}
	cmd.Flags().StringVar(&rate, "rate", "", "read at most this many bytes per second (SIZE such as 64MiB; default the controller's --audit-rate)")
	return cmd
}

// parseRate reads a byte rate: a SIZE (api.ParseSize), optionally
// followed by "/s".
func parseRate(s string) (int64, error) {
	return api.ParseSize(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
}
