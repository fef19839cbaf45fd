package main

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/ferrydr/ferry/controller/admin"
	"github.com/ferrydr/ferry/controller/api"
)

// Destructive verbs take --force (CLI.md: no prompts). Without it they
// change nothing: they print exactly what they would delete — on stdout,
// as JSON under --json — and fail with an error naming --force.

// forceRefusal is the error of a destructive verb run without --force.
func forceRefusal(what string) error {
	return usagef("%s: nothing was changed; add --force to do it", what)
}

// pointRows prints points as `points list` does.
func pointRows(w io.Writer, indent string, ps []api.Point) {
	var rows [][]string
	for _, p := range ps {
		rows = append(rows, []string{indent + strconv.FormatInt(p.ID, 10), fmtTime(p.Time), p.Consistency, api.FormatSize(p.Bytes), orDash(p.Name)})
	}
	table(w, []string{indent + "ID", "TIME", "CONSISTENCY", "SIZE", "NAME"}, rows)
}

// refuseCommit shows what `ferry commit M` would delete.
func refuseCommit(ctx context.Context, g *globals, cl *admin.Client, machine string) error {
	p, err := cl.CommitPreview(ctx, machine)
	if err != nil {
		return err
	}
	if g.json {
		if err := g.printJSON(p); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(g.stdout, "commit of %s would delete %d recovery point(s):\n", machine, len(p.Deleted))
		if len(p.Deleted) > 0 {
			pointRows(g.stdout, "  ", p.Deleted)
		}
		fmt.Fprintf(g.stdout, "and keep %d (the point it runs, the newest, and recovery-divergent ones):\n", len(p.Kept))
		pointRows(g.stdout, "  ", p.Kept)
	}
	return forceRefusal(fmt.Sprintf("commit deletes %d recovery point(s) of %s, after which change-point is no longer possible", len(p.Deleted), machine))
}

// refuseDeletePoints shows what `ferry unprotect M --delete-points` would
// delete.
func refuseDeletePoints(ctx context.Context, g *globals, cl *admin.Client, machine string) error {
	if _, err := cl.Machine(ctx, machine); err != nil {
		return err
	}
	ps, err := cl.Points(ctx, machine)
	if err != nil {
		return err
	}
	if g.json {
		if err := g.printJSON(api.CommitPreview{Machine: machine, Deleted: ps, Kept: []api.Point{}}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(g.stdout, "unprotect %s --delete-points would stop protecting it and delete all %d of its recovery point(s):\n", machine, len(ps))
		if len(ps) > 0 {
			pointRows(g.stdout, "  ", ps)
		}
	}
	return forceRefusal(fmt.Sprintf("unprotect --delete-points deletes %d recovery point(s) of %s", len(ps), machine))
}

// refuseTargetRemove shows what `ferry targets remove T` would delete.
func refuseTargetRemove(ctx context.Context, g *globals, cl *admin.Client, name string) error {
	ts, err := cl.Targets(ctx)
	if err != nil {
		return err
	}
	for _, t := range ts {
		if t.Name != name {
			continue
		}
		if g.json {
			if err := g.printJSON(t); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(g.stdout, "targets remove %s would delete the target:\n", name)
			fmt.Fprintf(g.stdout, "  agent:  %s\n  dir:    %s (the files under it stay on %s)\n  driver: %s, format %s\n",
				t.Agent, t.Dir, t.Agent, orDash(t.Driver), orDash(t.Format))
			if len(t.Networks) > 0 {
				fmt.Fprintf(g.stdout, "  networks: %d mapping(s)\n", len(t.Networks))
			}
		}
		return forceRefusal(fmt.Sprintf("targets remove deletes target %s (agent %s, dir %s)", name, t.Agent, t.Dir))
	}
	return api.Errorf(api.CodeNotFound, "target %q: not found", name)
}

// revokeWarning is printed by `agents revoke` without --force: this
// release proceeds, the next one requires it.
const revokeWarning = "warning: agents revoke without --force is deprecated: the next release requires --force (revoking ends the agent's session and its replication)"
