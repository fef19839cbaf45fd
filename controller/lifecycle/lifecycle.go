package lifecycle

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/ferrydr/ferry/controller/catalog"
)

// Action is something an administrator asks of a machine.
type Action string

// The actions this version implements.
const (
	Failover        Action = "failover"
	TestFailover    Action = "failover --test"
	PlannedFailover Action = "failover --planned"
	Commit          Action = "commit"
	ChangePoint     Action = "change-point"
	Cleanup         Action = "cleanup"
	Export          Action = "points export"
	Unprotect       Action = "unprotect"
	// Reprotect starts replication from the active site to the other one:
	// reverse after a committed failover, forward again after a failback.
	Reprotect Action = "reprotect"
	// Failback is the planned failover toward home (zero data loss);
	// UnplannedFailback moves home to a point, possibly losing writes.
	Failback          Action = "failback"
	UnplannedFailback Action = "failback --unplanned"
	// TestFailback starts a clone of the home disks at home as a test
	// while the machine runs at its recovery site; cleanup ends it.
	TestFailback Action = "failback --test"
	// Revert undoes an uncommitted failover: the machine stops at its
	// recovery site, the writes made there are kept as a named point, and
	// it starts at home again on its home disks (which a failover never
	// touches), replicating from there.
	Revert Action = "revert"
)

// Actions lists every action, in the order `machines show` offers them.
var Actions = []Action{Failover, TestFailover, PlannedFailover, Commit, ChangePoint, Cleanup, Export, Unprotect,
	Reprotect, Failback, UnplannedFailback, TestFailback, Revert}

// States lists the states the table has rows for, in lifecycle order. A
// state not listed (declared in catalog for later work) allows nothing.
var States = []string{catalog.StateSyncing, catalog.StateProtected, catalog.StateTestFailedOver,
	catalog.StateFailedOver, catalog.StateCommitted, catalog.StateReprotecting, catalog.StateReverseProtected,
	catalog.StateFailingBack, catalog.StateFailedBack, catalog.StateBackHome, catalog.StateTestFailedBack}

// Removed is the next state of an action that deletes the machine's record.
const Removed = "(removed)"

// Rule is one cell of the table: the state an allowed action leads to
// (Next; the same state for an action that does not change it), or, for a
// refused action, why (Reason) and what to do instead (Instead, with M
// standing for the machine's name).
type Rule struct {
	Next    string
	Reason  string
	Instead string
	// First is an action that runs before an allowed one: a disaster
	// beats a test, so a failover of a machine under a test failover (or
	// a drill) first cleans the test up, and its job says so.
	First Action
}

// Allowed reports whether the rule allows the action.
func (r Rule) Allowed() bool { return r.Reason == "" }

type cell struct {
	state  string
	action Action
}

func allow(next string) Rule { return Rule{Next: next} }
func allowAfter(first Action, next string) Rule {
	return Rule{Next: next, First: first}
}
func refuse(reason, instead string) Rule { return Rule{Reason: reason, Instead: instead} }

// Reasons several cells share.
var (
	neverFailedOver = refuse("the machine was never failed over: it runs at home and replicates to its recovery site", "nothing to do (ferry failover M moves it to its recovery site)")
	testRunning     = refuse("a test failover is running", "end it with 'ferry cleanup M' first")
	reprotectRuns   = refuse("a re-protect job is running", "wait for it (ferry machines show M names the job) or cancel it (ferry cancel JOB --force)")
	failbackRuns    = refuse("a failback job is running", "wait for it (ferry machines show M names the job)")
	noFailover      = refuse("there is no failover to commit", "nothing to do")
	noTest          = refuse("there is no test failover to clean up", "nothing to do")
	atRecovery      = refuse("the machine runs at its recovery site and replicates home", "bring it home with 'ferry failback M'")
	atHomeNoRepl    = refuse("the machine runs at home again but replicates nowhere yet", "re-protect it first (ferry reprotect M)")
	homeTestRunning = refuse("a failback test (a clone of the home disks) is running at home", "end it with 'ferry cleanup M' first")
	uncommittedBack = refuse("the unplanned failback is not committed", "commit it (ferry commit M --force) or move it to another point (ferry change-point M --point SPEC)")
)

// table is the lifecycle: every (state, action) pair of States × Actions.
var table = map[cell]Rule{
	// syncing: the first point is not there yet.
	{catalog.StateSyncing, Failover}:          refuse("the initial sync has made no recovery point yet", "wait for the first point (ferry machines show M)"),
	{catalog.StateSyncing, TestFailover}:      refuse("the initial sync has made no recovery point yet", "wait for the first point (ferry machines show M)"),
	{catalog.StateSyncing, PlannedFailover}:   refuse("the initial sync has made no recovery point yet", "wait for the first point (ferry machines show M)"),
	{catalog.StateSyncing, Commit}:            refuse("there is no failover to commit", "fail the machine over first, once it is protected"),
	{catalog.StateSyncing, ChangePoint}:       refuse("there is no failover whose point could change", "fail the machine over first, once it is protected"),
	{catalog.StateSyncing, Cleanup}:           refuse("there is no test failover to clean up", "nothing to do"),
	{catalog.StateSyncing, Export}:            refuse("the initial sync has made no recovery point yet", "wait for the first point (ferry machines show M)"),
	{catalog.StateSyncing, Unprotect}:         allow(Removed),
	{catalog.StateSyncing, Reprotect}:         refuse("the machine replicates from home to its recovery site already", "nothing to do"),
	{catalog.StateSyncing, Failback}:          neverFailedOver,
	{catalog.StateSyncing, UnplannedFailback}: neverFailedOver,

	// protected: replicating, with points.
	{catalog.StateProtected, Failover}:          allow(catalog.StateFailedOver),
	{catalog.StateProtected, TestFailover}:      allow(catalog.StateTestFailedOver),
	{catalog.StateProtected, PlannedFailover}:   allow(catalog.StateFailedOver),
	{catalog.StateProtected, Commit}:            refuse("there is no failover to commit", "fail it over first (ferry failover M)"),
	{catalog.StateProtected, ChangePoint}:       refuse("change-point moves a failed-over machine to another point, and this one has not failed over", "choose the point at failover (ferry failover M --point SPEC)"),
	{catalog.StateProtected, Cleanup}:           refuse("there is no test failover to clean up", "nothing to do"),
	{catalog.StateProtected, Export}:            allow(catalog.StateProtected),
	{catalog.StateProtected, Unprotect}:         allow(Removed),
	{catalog.StateProtected, Reprotect}:         refuse("the machine replicates from home to its recovery site already", "nothing to do"),
	{catalog.StateProtected, Failback}:          neverFailedOver,
	{catalog.StateProtected, UnplannedFailback}: neverFailedOver,

	// test-failed-over: a test copy runs at the target; replication goes on.
	// A disaster beats a test: failover cleans the test up first.
	{catalog.StateTestFailedOver, Failover}:          allowAfter(Cleanup, catalog.StateFailedOver),
	{catalog.StateTestFailedOver, TestFailover}:      refuse("a test failover is already running", "end it with 'ferry cleanup M' first"),
	{catalog.StateTestFailedOver, PlannedFailover}:   allowAfter(Cleanup, catalog.StateFailedOver),
	{catalog.StateTestFailedOver, Commit}:            refuse("a test failover cannot be committed", "end it with 'ferry cleanup M', then fail over (ferry failover M)"),
	{catalog.StateTestFailedOver, ChangePoint}:       refuse("change-point applies to a failover, not to a test failover", "end it with 'ferry cleanup M', then test another point (ferry failover M --test --point SPEC)"),
	{catalog.StateTestFailedOver, Cleanup}:           allow(catalog.StateProtected),
	{catalog.StateTestFailedOver, Export}:            allow(catalog.StateTestFailedOver),
	{catalog.StateTestFailedOver, Unprotect}:         refuse("a test failover is running", "end it with 'ferry cleanup M' first"),
	{catalog.StateTestFailedOver, Reprotect}:         testRunning,
	{catalog.StateTestFailedOver, Failback}:          testRunning,
	{catalog.StateTestFailedOver, UnplannedFailback}: testRunning,

	// failed-over: the machine runs at the target; its points are kept.
	{catalog.StateFailedOver, Failover}:          refuse("the machine already runs at its target", "commit it (ferry commit M --force), move it to another point (ferry change-point M --point SPEC) or undo the failover (ferry revert M)"),
	{catalog.StateFailedOver, TestFailover}:      refuse("the machine already runs at its target", "commit it (ferry commit M --force), move it to another point (ferry change-point M --point SPEC) or undo the failover (ferry revert M)"),
	{catalog.StateFailedOver, PlannedFailover}:   refuse("the machine already runs at its target", "commit it (ferry commit M --force), move it to another point (ferry change-point M --point SPEC) or undo the failover (ferry revert M)"),
	{catalog.StateFailedOver, Commit}:            allow(catalog.StateCommitted),
	{catalog.StateFailedOver, ChangePoint}:       allow(catalog.StateFailedOver),
	{catalog.StateFailedOver, Cleanup}:           refuse("there is no test failover to clean up: the machine was failed over", "commit it (ferry commit M --force)"),
	{catalog.StateFailedOver, Export}:            allow(catalog.StateFailedOver),
	{catalog.StateFailedOver, Unprotect}:         refuse("the failover is not committed", "commit it first (ferry commit M --force), or undo it (ferry revert M)"),
	{catalog.StateFailedOver, Reprotect}:         refuse("the failover is not committed: re-protection replicates the machine's new disks home, which ends the failover", "commit it first (ferry commit M --force), then re-protect (ferry reprotect M)"),
	{catalog.StateFailedOver, Failback}:          refuse("failback brings a machine home over reverse replication, and none runs yet", "commit it (ferry commit M --force), then re-protect it (ferry reprotect M)"),
	{catalog.StateFailedOver, UnplannedFailback}: refuse("failback brings a machine home over reverse replication, and none runs yet", "commit it (ferry commit M --force), then re-protect it (ferry reprotect M)"),

	// committed: the machine lives at the recovery site; its points are
	// gone but for what a re-protect needs.
	{catalog.StateCommitted, Failover}:          refuse("the failover was committed: the machine runs at its recovery site and its recovery points were deleted", "re-protect it (ferry reprotect M), then bring it home (ferry failback M)"),
	{catalog.StateCommitted, TestFailover}:      refuse("the failover was committed: the machine runs at its recovery site and its recovery points were deleted", "re-protect it (ferry reprotect M), then bring it home (ferry failback M)"),
	{catalog.StateCommitted, PlannedFailover}:   refuse("the failover was committed: the machine runs at its recovery site and its recovery points were deleted", "re-protect it (ferry reprotect M), then bring it home (ferry failback M)"),
	{catalog.StateCommitted, Commit}:            refuse("the failover was committed already and its recovery points deleted", "nothing to do"),
	{catalog.StateCommitted, ChangePoint}:       refuse("the failover was committed and its recovery points deleted, so change-point is no longer possible", "nothing to do"),
	{catalog.StateCommitted, Cleanup}:           refuse("there is no test failover to clean up", "nothing to do"),
	{catalog.StateCommitted, Export}:            refuse("the failover was committed and its recovery points deleted", "nothing to export"),
	{catalog.StateCommitted, Unprotect}:         allow(Removed),
	{catalog.StateCommitted, Reprotect}:         allow(catalog.StateReverseProtected),
	{catalog.StateCommitted, Failback}:          refuse("nothing replicates home yet: failback needs reverse replication", "re-protect it first (ferry reprotect M --stop-source)"),
	{catalog.StateCommitted, UnplannedFailback}: refuse("nothing replicates home yet: failback needs reverse replication", "re-protect it first (ferry reprotect M --stop-source)"),

	// reprotecting: a re-protect job makes the other site's disks a
	// replica; everything waits for it.
	{catalog.StateReprotecting, Failover}:          reprotectRuns,
	{catalog.StateReprotecting, TestFailover}:      reprotectRuns,
	{catalog.StateReprotecting, PlannedFailover}:   reprotectRuns,
	{catalog.StateReprotecting, Commit}:            reprotectRuns,
	{catalog.StateReprotecting, ChangePoint}:       reprotectRuns,
	{catalog.StateReprotecting, Cleanup}:           reprotectRuns,
	{catalog.StateReprotecting, Export}:            allow(catalog.StateReprotecting),
	{catalog.StateReprotecting, Unprotect}:         reprotectRuns,
	{catalog.StateReprotecting, Reprotect}:         reprotectRuns,
	{catalog.StateReprotecting, Failback}:          reprotectRuns,
	{catalog.StateReprotecting, UnplannedFailback}: reprotectRuns,

	// reverse-protected: active at the recovery site, replicating home
	// into the home disks.
	{catalog.StateReverseProtected, Failover}:          atRecovery,
	{catalog.StateReverseProtected, TestFailover}:      refuse("the machine runs at its recovery site: a test of the home copy is a failback test", "test it with 'ferry failback M --test'"),
	{catalog.StateReverseProtected, PlannedFailover}:   atRecovery,
	{catalog.StateReverseProtected, Commit}:            noFailover,
	{catalog.StateReverseProtected, ChangePoint}:       refuse("the machine runs on its own disks at its recovery site: there is no failover whose point could change", "nothing to do"),
	{catalog.StateReverseProtected, Cleanup}:           noTest,
	{catalog.StateReverseProtected, Export}:            allow(catalog.StateReverseProtected),
	{catalog.StateReverseProtected, Unprotect}:         allow(Removed),
	{catalog.StateReverseProtected, Reprotect}:         refuse("replication already runs from the recovery site home", "bring it home with 'ferry failback M'"),
	{catalog.StateReverseProtected, Failback}:          allow(catalog.StateBackHome),
	{catalog.StateReverseProtected, UnplannedFailback}: allow(catalog.StateFailedBack),

	// failing-back: a failback job moves the machine home.
	{catalog.StateFailingBack, Failover}:          failbackRuns,
	{catalog.StateFailingBack, TestFailover}:      failbackRuns,
	{catalog.StateFailingBack, PlannedFailover}:   failbackRuns,
	{catalog.StateFailingBack, Commit}:            failbackRuns,
	{catalog.StateFailingBack, ChangePoint}:       failbackRuns,
	{catalog.StateFailingBack, Cleanup}:           failbackRuns,
	{catalog.StateFailingBack, Export}:            allow(catalog.StateFailingBack),
	{catalog.StateFailingBack, Unprotect}:         failbackRuns,
	{catalog.StateFailingBack, Reprotect}:         failbackRuns,
	{catalog.StateFailingBack, Failback}:          failbackRuns,
	{catalog.StateFailingBack, UnplannedFailback}: failbackRuns,

	// failed-back: an unplanned failback moved the machine home to a
	// point; like failed-over, it may change point or be committed.
	{catalog.StateFailedBack, Failover}:          uncommittedBack,
	{catalog.StateFailedBack, TestFailover}:      uncommittedBack,
	{catalog.StateFailedBack, PlannedFailover}:   uncommittedBack,
	{catalog.StateFailedBack, Commit}:            allow(catalog.StateBackHome),
	{catalog.StateFailedBack, ChangePoint}:       allow(catalog.StateFailedBack),
	{catalog.StateFailedBack, Cleanup}:           noTest,
	{catalog.StateFailedBack, Export}:            allow(catalog.StateFailedBack),
	{catalog.StateFailedBack, Unprotect}:         uncommittedBack,
	{catalog.StateFailedBack, Reprotect}:         uncommittedBack,
	{catalog.StateFailedBack, Failback}:          refuse("the machine runs at home already", "nothing to do"),
	{catalog.StateFailedBack, UnplannedFailback}: refuse("the machine runs at home already", "nothing to do"),

	// back-home: the machine runs at home again after a failback;
	// re-protection restores the forward direction.
	{catalog.StateBackHome, Failover}:          atHomeNoRepl,
	{catalog.StateBackHome, TestFailover}:      atHomeNoRepl,
	{catalog.StateBackHome, PlannedFailover}:   atHomeNoRepl,
	{catalog.StateBackHome, Commit}:            refuse("a planned failback needs no commit", "nothing to do"),
	{catalog.StateBackHome, ChangePoint}:       refuse("a planned failback has no point to change", "nothing to do"),
	{catalog.StateBackHome, Cleanup}:           noTest,
	{catalog.StateBackHome, Export}:            allow(catalog.StateBackHome),
	{catalog.StateBackHome, Unprotect}:         allow(Removed),
	{catalog.StateBackHome, Reprotect}:         allow(catalog.StateProtected),
	{catalog.StateBackHome, Failback}:          refuse("the machine runs at home already", "nothing to do"),
	{catalog.StateBackHome, UnplannedFailback}: refuse("the machine runs at home already", "nothing to do"),
	// failback --test: a clone of the home disks started at home while
	// the machine runs at its recovery site and replicates home.
	{catalog.StateSyncing, TestFailback}:          neverFailedOver,
	{catalog.StateProtected, TestFailback}:        neverFailedOver,
	{catalog.StateTestFailedOver, TestFailback}:   testRunning,
	{catalog.StateFailedOver, TestFailback}:       refuse("failback brings a machine home over reverse replication, and none runs yet", "commit it (ferry commit M --force), then re-protect it (ferry reprotect M --test-dir DIR)"),
	{catalog.StateCommitted, TestFailback}:        refuse("nothing replicates home yet: a failback test starts a clone of the replicated home disks", "re-protect it first (ferry reprotect M --stop-source --test-dir DIR)"),
	{catalog.StateReprotecting, TestFailback}:     reprotectRuns,
	{catalog.StateReverseProtected, TestFailback}: allow(catalog.StateTestFailedBack),
	{catalog.StateFailingBack, TestFailback}:      failbackRuns,
	{catalog.StateFailedBack, TestFailback}:       refuse("the machine runs at home already", "nothing to do"),
	{catalog.StateBackHome, TestFailback}:         refuse("the machine runs at home already", "nothing to do"),

	// test-failed-back: a test copy of the home disks runs at home; the
	// machine runs at its recovery site and its replication home goes on.
	{catalog.StateTestFailedBack, Failover}:          homeTestRunning,
	{catalog.StateTestFailedBack, TestFailover}:      homeTestRunning,
	{catalog.StateTestFailedBack, PlannedFailover}:   homeTestRunning,
	{catalog.StateTestFailedBack, Commit}:            refuse("a failback test cannot be committed", "end it with 'ferry cleanup M', then fail back (ferry failback M)"),
	{catalog.StateTestFailedBack, ChangePoint}:       homeTestRunning,
	{catalog.StateTestFailedBack, Cleanup}:           allow(catalog.StateReverseProtected),
	{catalog.StateTestFailedBack, Export}:            allow(catalog.StateTestFailedBack),
	{catalog.StateTestFailedBack, Unprotect}:         homeTestRunning,
	{catalog.StateTestFailedBack, Reprotect}:         homeTestRunning,
	{catalog.StateTestFailedBack, Failback}:          allowAfter(Cleanup, catalog.StateBackHome),
	{catalog.StateTestFailedBack, UnplannedFailback}: allowAfter(Cleanup, catalog.StateFailedBack),
	{catalog.StateTestFailedBack, TestFailback}:      refuse("a failback test is already running", "end it with 'ferry cleanup M' first"),

	// revert: only an uncommitted failover is undone; the home disks are
	// still what they were when it began.
	{catalog.StateSyncing, Revert}:          neverFailedOver,
	{catalog.StateProtected, Revert}:        neverFailedOver,
	{catalog.StateTestFailedOver, Revert}:   refuse("a test failover is ended by cleanup, not reverted", "end it with 'ferry cleanup M'"),
	{catalog.StateFailedOver, Revert}:       allow(catalog.StateProtected),
	{catalog.StateCommitted, Revert}:        refuse("the failover was committed: the machine lives at its recovery site and its recovery points were deleted", "re-protect it (ferry reprotect M), then bring it home (ferry failback M)"),
	{catalog.StateReprotecting, Revert}:     reprotectRuns,
	{catalog.StateReverseProtected, Revert}: refuse("the failover was committed and the machine replicates home", "bring it home with 'ferry failback M'"),
	{catalog.StateFailingBack, Revert}:      failbackRuns,
	{catalog.StateFailedBack, Revert}:       refuse("the machine runs at home already (an unplanned failback)", "commit it (ferry commit M) or move it to another point (ferry change-point M --point SPEC)"),
	{catalog.StateBackHome, Revert}:         refuse("the machine runs at home already", "nothing to do"),
	{catalog.StateTestFailedBack, Revert}:   homeTestRunning,
}

// Lookup returns the table's rule for an action in a state. A state the
// table has no row for refuses every action.
func Lookup(state string, a Action) Rule {
	if r, ok := table[cell{state, a}]; ok {
		return r
	}
	return refuse(fmt.Sprintf("this version has no action for a machine in state %s", state), "nothing to do")
}

// Reaches reports whether the action, allowed in some state, leads to
// state: a step that sets the next state and is run again finds it set.
func Reaches(a Action, state string) bool {
	for _, st := range States {
		if r := Lookup(st, a); r.Allowed() && r.Next == state {
			return true
		}
	}
	return false
}

// Allowed returns the actions a state allows, in the order of Actions.
func Allowed(state string) []string {
	out := []string{}
	for _, a := range Actions {
		if Lookup(state, a).Allowed() {
			out = append(out, string(a))
		}
	}
	return out
}

// Refusal is an action the table refuses, with its reason.
type Refusal struct {
	Machine string
	State   string
	Action  Action
	Reason  string
	Instead string
}

func (e *Refusal) Error() string {
	return fmt.Sprintf("machine %s is %s: %s is not possible: %s; instead: %s", e.Machine, e.State, e.Action, e.Reason, e.Instead)
}

// Check returns nil when the table allows the action on a machine in a
// state, else a *Refusal saying why and what to do instead.
func Check(machine, state string, a Action) error {
	r := Lookup(state, a)
	if r.Allowed() {
		return nil
	}
	return &Refusal{Machine: machine, State: state, Action: a, Reason: r.Reason,
		Instead: machineWord.ReplaceAllLiteralString(r.Instead, machine)}
}

// machineWord is the M that stands for the machine's name in Instead.
var machineWord = regexp.MustCompile(`\bM\b`)

// Markdown renders the table for docs/failover.md: a row per state, a
// column per action; an allowed cell names the next state, a refused one
// says "refused" (the reasons follow the table in the doc).
func Markdown() string {
	var b strings.Builder
	b.WriteString("| state |")
	for _, a := range Actions {
		fmt.Fprintf(&b, " `%s` |", a)
	}
	b.WriteString("\n| --- |")
	for range Actions {
		b.WriteString(" --- |")
	}
	b.WriteString("\n")
	for _, st := range States {
		fmt.Fprintf(&b, "| `%s` |", st)
		for _, a := range Actions {
			r := Lookup(st, a)
			if r.Allowed() && r.First != "" {
				fmt.Fprintf(&b, " `%s`, then → `%s` |", r.First, r.Next)
			} else if r.Allowed() {
				fmt.Fprintf(&b, " → `%s` |", r.Next)
			} else {
				b.WriteString(" refused |")
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\nRefusals (reason; instead):\n\n")
	for _, st := range States {
		for _, a := range Actions {
			if r := Lookup(st, a); !r.Allowed() {
				fmt.Fprintf(&b, "* `%s` × `%s`: %s; %s\n", st, a, r.Reason, r.Instead)
			}
		}
	}
	return b.String()
}
