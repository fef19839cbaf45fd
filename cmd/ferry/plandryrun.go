package main

import (
	"fmt"

	"github.com/ferrydr/ferry/controller/api"
)

// printPlanDryRun shows what `failover --plan P` would do, group by group
// in order: each member with the point it would use, its target and the
// free space there against what the move needs (or why it is skipped),
// then the group's actions. Nothing was changed and no job recorded.
func printPlanDryRun(g *globals, j api.Job) {
	fmt.Fprintf(g.stdout, "dry run: %s of plan %s\n", j.Kind, j.Plan)
	groups := []int{}
	seen := map[int]bool{}
	for _, c := range j.Checks {
		if !seen[c.Group] {
			seen[c.Group] = true
			groups = append(groups, c.Group)
		}
	}
	for _, a := range j.Actions {
		if !seen[a.Group] {
			seen[a.Group] = true
			groups = append(groups, a.Group)
		}
	}
	for _, n := range groups {
		fmt.Fprintf(g.stdout, "group %d\n", n)
		printPlanActions(g, j, n, "pre")
		for _, c := range j.Checks {
			if c.Group != n {
				continue
			}
			switch {
			case c.Skipped != "":
				fmt.Fprintf(g.stdout, "  %s: skipped (%s)\n", c.Machine, c.Skipped)
			case c.Error != "":
				fmt.Fprintf(g.stdout, "  %s: would fail: %s\n", c.Machine, c.Error)
			default:
				point := fmt.Sprintf("point %d (%s, %s)", c.PointID, fmtTime(c.PointTime), c.Consistency)
				if c.Fresh {
					point += ", or a fresh cycle first when the source is reachable"
				}
				free := "free space unknown"
				if c.FreeBytes > 0 {
					free = api.FormatSize(c.FreeBytes) + " free"
					if c.FreeBytes < c.NeedBytes {
						free += " — NOT ENOUGH"
					}
				}
				fmt.Fprintf(g.stdout, "  %s: %s → target %s (%s): needs up to %s, %s\n",
					c.Machine, point, c.Target, c.TargetDir, api.FormatSize(c.NeedBytes), free)
				if len(c.IPs) > 0 {
					fmt.Fprintf(g.stdout, "    re-IP (the plan's, over protect --ip): %s\n", api.FormatNICAddresses(c.IPs))
				}
			}
		}
		printPlanActions(g, j, n, "post")
	}
	fmt.Fprintln(g.stdout, "nothing was changed and no job was recorded")
}

func printPlanActions(g *globals, j api.Job, group int, phase string) {
	for _, a := range j.Actions {
		if a.Group == group && a.Phase == phase {
			fmt.Fprintf(g.stdout, "  %s action: %s\n", phase, actionText(a))
		}
	}
}
