package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/api"
)

func newJobsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "jobs", Short: "Jobs: list, show, watch, resume"}
	list := &cobra.Command{
		Use: "list", Short: "List jobs, newest first", Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			js, err := cl.Jobs(c.Context())
			if err != nil {
				return err
			}
			if g.json {
				if js == nil {
					js = []api.Job{}
				}
				return g.printJSON(js)
			}
			var rows [][]string
			for _, j := range js {
				var ms []string
				for _, m := range j.Machines {
					ms = append(ms, m.Name)
				}
				rows = append(rows, []string{j.ID, j.Kind, j.State, strings.Join(ms, ","), fmtTime(j.Created), currentStep(j)})
			}
			table(g.stdout, []string{"ID", "KIND", "STATE", "MACHINES", "CREATED", "STEP"}, rows)
			return nil
		},
	}
	show := &cobra.Command{
		Use: "show ID", Short: "Show a job: steps, progress, machines, errors", Args: exactArgs(1, "ID"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			j, err := cl.Job(c.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(j)
			}
			printJob(g, j)
			return nil
		},
	}
	watch := &cobra.Command{
		Use: "watch ID", Short: "Follow a job live to its end and exit with its outcome (0 succeeded, 3 failed, 4 partial; --json: one JSON object per line)", Args: exactArgs(1, "ID"),
		RunE: func(c *cobra.Command, args []string) error { return runJobsWatch(c.Context(), g, args[0]) },
	}
	resume := &cobra.Command{
		Use: "resume ID", Short: "Continue a job waiting on a manual action", Args: exactArgs(1, "ID"),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			j, err := cl.ResumeJob(c.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, j.ID, j.State)
			return nil
		},
	}
	cmd.AddCommand(list, show, watch, resume)
	return cmd
}

func currentStep(j api.Job) string {
	for _, s := range j.Steps {
		if s.State == api.StepRunning || s.State == api.StepFailed {
			return s.Name + " " + s.State
		}
	}
	return "-"
}

func printJob(g *globals, j api.Job) {
	fmt.Fprintf(g.stdout, "Job:      %s (%s)\nState:    %s\nCreated:  %s\n", j.ID, j.Kind, j.State, fmtTime(j.Created))
	if j.Plan != "" {
		fmt.Fprintf(g.stdout, "Plan:     %s\n", j.Plan)
	}
	if j.Waiting != nil {
		fmt.Fprintf(g.stdout, "Waiting:  %s (since %s; continue with: ferry jobs resume %s)\n", j.Waiting.Text, fmtTime(j.Waiting.Since), j.ID)
	}
	if j.Error != "" {
		fmt.Fprintf(g.stdout, "Error:    %s\n", j.Error)
	}
	var rows [][]string
	for _, s := range j.Steps {
		prog := fmt.Sprintf("%3.0f%%", 100*s.Progress)
		if s.BytesTotal > 0 {
			prog += fmt.Sprintf(" (%s of %s)", api.FormatSize(s.BytesDone), api.FormatSize(s.BytesTotal))
		}
		detail := s.Error
		if detail == "" {
			detail = s.Note
		}
		rows = append(rows, []string{"  " + s.Name, s.State, prog, detail})
	}
	table(g.stdout, []string{"  STEP", "STATE", "PROGRESS", "DETAIL"}, rows)
	for _, m := range j.Machines {
		fmt.Fprintf(g.stdout, "Machine %s: %s, point %d", m.Name, m.State, m.PointID)
		if m.Group != 0 {
			fmt.Fprintf(g.stdout, " (group %d)", m.Group)
		}
		if m.Error != "" {
			fmt.Fprintf(g.stdout, ": %s", m.Error)
		}
		fmt.Fprintln(g.stdout)
		for _, s := range m.Steps {
			fmt.Fprintf(g.stdout, "  %-16s %-9s %s → %s\n", s.Name, s.State, fmtClock(s.Started), fmtClock(s.Ended))
		}
		for _, n := range m.Notes {
			fmt.Fprintf(g.stdout, "  %s\n", n)
		}
	}
	for _, a := range j.Actions {
		fmt.Fprintf(g.stdout, "Action group %d %s %d: %s, %s", a.Group, a.Phase, a.Index+1, actionText(a), a.State)
		if a.Error != "" {
			fmt.Fprintf(g.stdout, ": %s", a.Error)
		}
		fmt.Fprintln(g.stdout)
		for _, line := range strings.Split(strings.TrimRight(a.Output, "\n"), "\n") {
			if line != "" {
				fmt.Fprintf(g.stdout, "  | %s\n", line)
			}
		}
	}
}

// actionText names a plan action: its script and where it runs, or the
// manual action's text.
func actionText(a api.JobAction) string {
	if a.Manual != "" {
		return "manual: " + a.Manual
	}
	on := "controller"
	if a.On != "" {
		on = "agent " + a.On
	}
	return fmt.Sprintf("script on %s: %s", on, a.Script)
}

// fmtClock shows a step time to the millisecond ("-" when unset).
func fmtClock(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("15:04:05.000")
}

func runJobsWatch(ctx context.Context, g *globals, id string) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	var last api.Job
	out, lastLine := newProgressOut(g.stdout), ""
	bars := map[string]bool{} // steps whose progress is shown
	err = cl.WatchJob(ctx, id, func(j api.Job) error {
		last = j
		if g.json {
			// NDJSON: one compact object per line.
			b, err := jsonLine(j)
			if err != nil {
				return err
			}
			_, err = g.stdout.Write(b)
			return err
		}
		// A line when the job or its step changes; a step moving data
		// draws a bar on a terminal (a line per tenth elsewhere).
		line := fmt.Sprintf("%s %s: %s", j.ID, j.State, currentStep(j))
		if j.Waiting != nil {
			line += fmt.Sprintf("\n%s waiting on a manual action: %s (continue with: ferry jobs resume %s)", j.ID, j.Waiting.Text, j.ID)
		}
		if line != lastLine {
			lastLine = line
			out.println("%s", line)
		}
		for _, s := range j.Steps {
			out.step("  "+s.Name, s, bars[s.Name])
			bars[s.Name] = s.State == api.StepRunning && s.BytesTotal > 0
		}
		return nil
	})
	out.finish()
	if err != nil {
		return err
	}
	if !api.Terminal(last.State) { // a watcher that fell behind can miss the final snapshot
		if last, err = cl.Job(ctx, id); err != nil {
			return err
		}
	}
	// Exit with the job's outcome, as --wait does (3 failed, 4 partial).
	return jobOutcome(last)
}
