package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/controller/api"
)

// estate is `ferry status`: the whole installation at a glance, built from
// the machines, jobs and agents the controller lists.
type estate struct {
	Machines estateMachines `json:"machines"`
	// WorstRPO is the machine whose newest point is oldest (null when no
	// machine has a point yet).
	WorstRPO     *estateRPO      `json:"worst_rpo"`
	Cycles       []estateCycle   `json:"cycles"`       // machines with a cycle running now
	RunningJobs  []estateJob     `json:"running_jobs"` // queued, running or waiting
	Agents       estateAgents    `json:"agents"`
	Disconnected []estateAgent   `json:"disconnected_agents"` // enrolled, not revoked, no session
	Attention    []estateMachine `json:"attention"`           // machines that are not healthy
}

type estateMachines struct {
	Total    int            `json:"total"`
	ByState  map[string]int `json:"by_state"`
	ByHealth map[string]int `json:"by_health"`
}

type estateRPO struct {
	Machine    string  `json:"machine"`
	RPOSeconds float64 `json:"rpo_seconds"`
	Health     string  `json:"health"`
}

type estateCycle struct {
	Machine  string                   `json:"machine"`
	Progress *api.ReplicationProgress `json:"progress"`
}

type estateJob struct {
	ID       string   `json:"id"`
	Kind     string   `json:"kind"`
	State    string   `json:"state"`
	Machines []string `json:"machines"`
	Step     string   `json:"step"`
}

type estateAgents struct {
	Total     int `json:"total"`
	Connected int `json:"connected"`
	Revoked   int `json:"revoked"`
}

type estateAgent struct {
	Name     string    `json:"name"`
	ID       string    `json:"id"`
	LastSeen time.Time `json:"last_seen"`
	Machines []string  `json:"machines"` // the machines it is the source agent of
}

type estateMachine struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Health string `json:"health"`
	Reason string `json:"reason,omitempty"`
}

func newStatusCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "The estate at a glance: machines by state and health, worst RPO, running cycles and jobs, disconnected agents",
		Long: `Summarise the installation: how many machines are in each state and
health, the worst RPO, the replication cycles running now (with progress), the
jobs that have not ended, and the agents without a session (with the machines
they replicate). Machines that are not healthy are listed with the reason.

--json prints one object: machines {total, by_state, by_health}; worst_rpo
{machine, rpo_seconds, health} (null before any point); cycles [{machine,
progress}] (progress as in 'machines show --json'); running_jobs [{id, kind,
state, machines, step}] (jobs not ended: queued, running, waiting); agents
{total, connected, revoked}; disconnected_agents [{name, id, last_seen,
machines}] (revoked agents are not listed); attention [{name, state, health,
reason}].`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(c *cobra.Command, _ []string) error { return runStatus(c.Context(), g) },
	}
}

func runStatus(ctx context.Context, g *globals) error {
	cl, err := g.client()
	if err != nil {
		return err
	}
	ms, err := cl.Machines(ctx)
	if err != nil {
		return err
	}
	js, err := cl.Jobs(ctx)
	if err != nil {
		return err
	}
	as, err := cl.Agents(ctx)
	if err != nil {
		return err
	}
	e := summarise(ms, js, as)
	if g.json {
		return g.printJSON(e)
	}
	printEstate(g, e)
	return nil
}

// summarise builds the estate from the lists.
func summarise(ms []api.Machine, js []api.Job, as []api.Agent) estate {
	e := estate{Machines: estateMachines{Total: len(ms), ByState: map[string]int{}, ByHealth: map[string]int{}},
		Cycles: []estateCycle{}, RunningJobs: []estateJob{}, Disconnected: []estateAgent{}, Attention: []estateMachine{}}
	byAgent := map[string][]string{}
	for _, m := range ms {
		e.Machines.ByState[m.State]++
		e.Machines.ByHealth[m.Health]++
		byAgent[m.Agent] = append(byAgent[m.Agent], m.Name)
		if m.RPOSeconds != nil && (e.WorstRPO == nil || *m.RPOSeconds > e.WorstRPO.RPOSeconds) {
			e.WorstRPO = &estateRPO{Machine: m.Name, RPOSeconds: *m.RPOSeconds, Health: m.Health}
		}
		if m.Progress.Active() {
			e.Cycles = append(e.Cycles, estateCycle{Machine: m.Name, Progress: m.Progress})
		}
		if m.Health != "healthy" {
			e.Attention = append(e.Attention, estateMachine{Name: m.Name, State: m.State, Health: m.Health, Reason: m.HealthReason})
		}
	}
	for _, j := range js {
		if api.Terminal(j.State) {
			continue
		}
		ej := estateJob{ID: j.ID, Kind: j.Kind, State: j.State, Machines: []string{}, Step: currentStep(j)}
		for _, m := range j.Machines {
			ej.Machines = append(ej.Machines, m.Name)
		}
		e.RunningJobs = append(e.RunningJobs, ej)
	}
	for _, a := range as {
		e.Agents.Total++
		switch {
		case a.Revoked:
			e.Agents.Revoked++
		case a.Connected:
			e.Agents.Connected++
		default:
			ea := estateAgent{Name: a.Name, ID: a.ID, LastSeen: a.LastSeen, Machines: byAgent[a.Name]}
			if ea.Machines == nil {
				ea.Machines = []string{}
			}
			e.Disconnected = append(e.Disconnected, ea)
		}
	}
	return e
}

func printEstate(g *globals, e estate) {
	w := g.stdout
	fmt.Fprintf(w, "Machines:   %d", e.Machines.Total)
	if e.Machines.Total > 0 {
		fmt.Fprintf(w, " (%s; %s)", counts(e.Machines.ByState), counts(e.Machines.ByHealth))
	}
	fmt.Fprintln(w)
	if e.WorstRPO != nil {
		rpo := time.Duration(e.WorstRPO.RPOSeconds * float64(time.Second)).Round(100 * time.Millisecond)
		fmt.Fprintf(w, "Worst RPO:  %s (%s, %s)\n", rpo, e.WorstRPO.Machine, e.WorstRPO.Health)
	} else {
		fmt.Fprintln(w, "Worst RPO:  - (no point yet)")
	}
	fmt.Fprintf(w, "Agents:     %d connected of %d", e.Agents.Connected, e.Agents.Total)
	if e.Agents.Revoked > 0 {
		fmt.Fprintf(w, " (%d revoked)", e.Agents.Revoked)
	}
	fmt.Fprintln(w)
	for _, a := range e.Disconnected {
		fmt.Fprintf(w, "  disconnected: %s, last seen %s", a.Name, fmtTime(a.LastSeen))
		if len(a.Machines) > 0 {
			fmt.Fprintf(w, " (source of %s)", strings.Join(a.Machines, ", "))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "Cycles:     %d running\n", len(e.Cycles))
	for _, c := range e.Cycles {
		fmt.Fprintf(w, "  %s: %s\n", c.Machine, fmtProgressLong(c.Progress))
	}
	fmt.Fprintf(w, "Jobs:       %d running\n", len(e.RunningJobs))
	for _, j := range e.RunningJobs {
		fmt.Fprintf(w, "  %s %s (%s) %s: %s\n", j.ID, j.Kind, strings.Join(j.Machines, ", "), j.State, j.Step)
	}
	if len(e.Attention) > 0 {
		fmt.Fprintln(w, "Attention:")
		for _, m := range e.Attention {
			fmt.Fprintf(w, "  %s (%s) %s: %s\n", m.Name, m.State, m.Health, m.Reason)
		}
	}
}

// counts is "protected 2, syncing 1", by name.
func counts(m map[string]int) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(out, ", ")
}
