package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/internal/buildinfo"
)

func newVerifyCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "verify [MACHINE]",
		Short: "Re-read and re-hash stored data; name every damaged point and disk",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usagef("want at most one MACHINE")
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			machine := ""
			if len(args) == 1 {
				machine = args[0]
			}
			cl, err := g.client()
			if err != nil {
				return err
			}
			r, err := cl.Verify(c.Context(), machine)
			if err != nil {
				return err
			}
			return printDamage(g, r, fmt.Sprintf("verified %d chunks (%d bytes)", r.Chunks, r.Bytes), r.Damaged)
		},
	}
}

func newGCCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "gc", Short: "Drop data no retained point references, re-encode S2 chunks to zstd, repack mostly-dead packs (online)", Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			r, err := cl.GC(c.Context())
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(r)
			}
			fmt.Fprintf(g.stdout, "deleted %d chunks and %d packs, re-encoded %d chunks to zstd (%d bytes smaller), repacked %d packs, freed %d bytes\n",
				r.ChunksDeleted, r.PacksDeleted, r.ChunksRecoded, r.RecodeSaved, r.PacksRepacked, r.BytesFreed)
			return nil
		},
	}
}

func newVersionCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "version", Short: "Print the version", Args: exactArgs(0, "no arguments"),
		RunE: func(*cobra.Command, []string) error {
			fmt.Fprintln(g.stdout, buildinfo.Version)
			return nil
		},
	}
}

// printDamage prints a verify or audit result: JSON, or its summary line
// and each damaged chunk with the points it affects; damage is an error
// (exit 1), so a script sees it without parsing.
func printDamage(g *globals, result any, summary string, damaged []api.DamagedChunk) error {
	if g.json {
		if err := g.printJSON(result); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(g.stdout, summary)
		for _, d := range damaged {
			fmt.Fprintf(g.stdout, "DAMAGED chunk %s in pack %s: %s\n", orDash(d.Hash), orDash(d.Pack), d.Error)
			for _, a := range d.Affected {
				fmt.Fprintf(g.stdout, "  affects machine %s point %d disk %s blocks %v\n", a.Machine, a.PointID, a.Disk, a.Blocks)
			}
		}
	}
	if len(damaged) > 0 {
		return fmt.Errorf("%d damaged chunk(s)", len(damaged))
	}
	return nil
}
