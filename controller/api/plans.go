package api

import "time"

// DefaultPlanActionTimeout bounds a script action that names no timeout
// (CLI.md: every command has a timeout, 5 minutes unless told).
const DefaultPlanActionTimeout = 5 * time.Minute

// A recovery plan moves applications, not single machines: groups run in
// order (group 1 first; a planned failover stops sources in reverse
// order), the machines of a group move in parallel, and each group has
// actions run before (pre) and after (post) its machines move.
type Plan struct {
	Name   string      `json:"name" yaml:"name"`
	Groups []PlanGroup `json:"groups" yaml:"groups"`
}

// PlanGroup is one group of a plan; Number counts from 1 in order.
type PlanGroup struct {
	Number   int          `json:"number" yaml:"-"`
	Machines []string     `json:"machines" yaml:"machines"`
	Pre      []PlanAction `json:"pre,omitempty" yaml:"pre,omitempty"`
	Post     []PlanAction `json:"post,omitempty" yaml:"post,omitempty"`
	// IPs re-address members at a failover of the plan, by machine name
	// (plan_ips.go); in YAML they are a member's "ips" key.
	IPs map[string][]NICAddress `json:"ips,omitempty" yaml:"-"`
}

// PlanAction is a script (on the controller, or on the agent named by On)
// or a manual step (Manual: the text shown while the job waits for
// `ferry jobs resume`). Exactly one of Script and Manual is set.
type PlanAction struct {
	Script string `json:"script,omitempty" yaml:"script,omitempty"`
	// On is the agent the script runs on; empty runs it on the controller.
	On string `json:"on,omitempty" yaml:"on,omitempty"`
	// Timeout bounds the script (zero: DefaultPlanActionTimeout).
	Timeout Duration `json:"timeout,omitempty" yaml:"timeout,omitempty"`
	// Undo runs when a planned failover rolls back after this action ran.
	Undo   string `json:"undo,omitempty" yaml:"undo,omitempty"`
	Manual string `json:"manual,omitempty" yaml:"manual,omitempty"`
}

// Members lists every machine of a plan, group by group.
func (p Plan) Members() []string {
	var out []string
	for _, g := range p.Groups {
		out = append(out, g.Machines...)
	}
	return out
}

// GroupOf returns the number of the group holding a machine (0: none).
func (p Plan) GroupOf(machine string) int {
	for _, g := range p.Groups {
		for _, m := range g.Machines {
			if m == machine {
				return g.Number
			}
		}
	}
	return 0
}
