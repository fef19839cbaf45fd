package main

import (
	"fmt"

	"github.com/spf13/cobra"

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
			if g.json {
				if err := g.printJSON(r); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(g.stdout, "verified %d chunks (%d bytes)\n", r.Chunks, r.Bytes)
				for _, d := range r.Damaged {
					fmt.Fprintf(g.stdout, "DAMAGED chunk %s in pack %s: %s\n", d.Hash, d.Pack, d.Error)
					for _, a := range d.Affected {
						fmt.Fprintf(g.stdout, "  affects machine %s point %d disk %s (%d block(s))\n", a.Machine, a.PointID, a.Disk, len(a.Blocks))
					}
				}
			}
			if len(r.Damaged) > 0 {
				return fmt.Errorf("%d damaged chunk(s)", len(r.Damaged))
			}
			return nil
		},
	}
}

func newGCCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "gc", Short: "Drop data no retained point references and repack mostly-dead packs (online)", Args: exactArgs(0, "no arguments"),
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
			fmt.Fprintf(g.stdout, "deleted %d chunks and %d packs, repacked %d packs, freed %d bytes\n", r.ChunksDeleted, r.PacksDeleted, r.PacksRepacked, r.BytesFreed)
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
