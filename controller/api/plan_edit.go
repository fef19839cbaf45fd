package api

import (
	"fmt"
	"slices"
	"strings"
)

// Plan edits: one request per `ferry plans` editing verb, applied by the
// controller under one lock so two admins editing a plan cannot lose each
// other's change.
const (
	PlanAddGroup      = "add-group"
	PlanAddMachine    = "add-machine"
	PlanRemoveMachine = "remove-machine"
	PlanAddAction     = "add-action"
)

// Phases of a group's actions.
const (
	PhasePre  = "pre"
	PhasePost = "post"
)

// PlanEdit is one edit of a plan.
type PlanEdit struct {
	Op       string      `json:"op"`
	Group    int         `json:"group,omitempty"`    // add-machine, add-action
	Machines []string    `json:"machines,omitempty"` // add-group, add-machine, remove-machine (one)
	Phase    string      `json:"phase,omitempty"`    // add-action: pre or post
	Action   *PlanAction `json:"action,omitempty"`
	// IPs: add-machine of one machine with its re-IP (--ip).
	IPs []NICAddress `json:"ips,omitempty"`
}

// PlanApplyResult is what `ferry plans apply` did to one plan: Changes is
// empty when the plan already was as asked.
type PlanApplyResult struct {
	Plan    Plan     `json:"plan"`
	Created bool     `json:"created"`
	Changes []string `json:"changes"`
}

// Kind names what an action does: "script" or "manual".
func (a PlanAction) Kind() string {
	if a.Manual != "" {
		return "manual"
	}
	return "script"
}

// Check validates an action's shape (not the agent it names): exactly one
// of a script and a manual text, and the script-only fields only with a
// script.
func (a PlanAction) Check() error {
	switch {
	case strings.TrimSpace(a.Script) == "" && strings.TrimSpace(a.Manual) == "":
		return fmt.Errorf("an action needs a script or a manual text")
	case a.Script != "" && a.Manual != "":
		return fmt.Errorf("an action is a script or a manual step, not both")
	case a.Manual != "" && (a.On != "" || a.Timeout != 0 || a.Undo != ""):
		return fmt.Errorf("a manual action takes no agent, timeout or undo script (those are for scripts)")
	case a.Timeout < 0:
		return fmt.Errorf("an action's timeout must not be negative")
	}
	return nil
}

// Describe is the action in one line, as show and apply print it.
func (a PlanAction) Describe() string {
	if a.Manual != "" {
		return fmt.Sprintf("manual %q", a.Manual)
	}
	where := "the controller"
	if a.On != "" {
		where = "agent " + a.On
	}
	s := fmt.Sprintf("script %q on %s", a.Script, where)
	if a.Timeout != 0 {
		s += ", timeout " + a.Timeout.String()
	}
	if a.Undo != "" {
		s += fmt.Sprintf(", undo %q", a.Undo)
	}
	return s
}

// Actions counts the plan's actions.
func (p Plan) Actions() int {
	n := 0
	for _, g := range p.Groups {
		n += len(g.Pre) + len(g.Post)
	}
	return n
}

// Changes lists, one line each, what turns plan old into plan new (old nil:
// new is created). Groups are compared by number: groups are ordered, and
// renumbering them is a change of every group after the first moved one.
func Changes(old *Plan, new Plan) []string {
	if old == nil {
		return []string{fmt.Sprintf("plan %s: created with %d groups, %d machines, %d actions",
			new.Name, len(new.Groups), len(new.Members()), new.Actions())}
	}
	var out []string
	say := func(format string, args ...any) {
		out = append(out, fmt.Sprintf("plan %s: ", new.Name)+fmt.Sprintf(format, args...))
	}
	for i := range max(len(old.Groups), len(new.Groups)) {
		n := i + 1
		switch {
		case i >= len(old.Groups):
			g := new.Groups[i]
			say("group %d added (%s; %d actions)", n, machinesOrNone(g.Machines), len(g.Pre)+len(g.Post))
			for _, m := range g.Machines {
				if ips := g.IPs[m]; len(ips) > 0 {
					say("group %d: machine %s re-IP %s", n, m, FormatNICAddresses(ips))
				}
			}
			continue
		case i >= len(new.Groups):
			say("group %d removed (%s)", n, machinesOrNone(old.Groups[i].Machines))
			continue
		}
		og, ng := old.Groups[i], new.Groups[i]
		for _, m := range ng.Machines {
			if !slices.Contains(og.Machines, m) {
				if ips := ng.IPs[m]; len(ips) > 0 {
					say("group %d: machine %s added (re-IP %s)", n, m, FormatNICAddresses(ips))
				} else {
					say("group %d: machine %s added", n, m)
				}
			}
		}
		for _, m := range og.Machines {
			if !slices.Contains(ng.Machines, m) {
				say("group %d: machine %s removed", n, m)
			}
		}
		if len(og.Machines) == len(ng.Machines) && !slices.Equal(og.Machines, ng.Machines) && sameSet(og.Machines, ng.Machines) {
			say("group %d: machines reordered (%s)", n, strings.Join(ng.Machines, ", "))
		}
		for _, m := range ng.Machines {
			if slices.Contains(og.Machines, m) && !slices.Equal(og.IPs[m], ng.IPs[m]) {
				say("group %d: machine %s re-IP %s", n, m, ipsOrNone(ng.IPs[m]))
			}
		}
		actionChanges(say, n, PhasePre, og.Pre, ng.Pre)
		actionChanges(say, n, PhasePost, og.Post, ng.Post)
	}
	return out
}

func actionChanges(say func(string, ...any), group int, phase string, old, new []PlanAction) {
	for i := range max(len(old), len(new)) {
		switch {
		case i >= len(old):
			say("group %d: %s action %d added: %s", group, phase, i+1, new[i].Describe())
		case i >= len(new):
			say("group %d: %s action %d removed: %s", group, phase, i+1, old[i].Describe())
		case old[i] != new[i]:
			say("group %d: %s action %d changed: %s", group, phase, i+1, new[i].Describe())
		}
	}
}

func ipsOrNone(ips []NICAddress) string {
	if len(ips) == 0 {
		return "removed (the machine's own --ip apply)"
	}
	return FormatNICAddresses(ips)
}

func machinesOrNone(ms []string) string {
	if len(ms) == 0 {
		return "no machines"
	}
	return strings.Join(ms, ", ")
}

func sameSet(a, b []string) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return len(a) == len(b)
}
