package lifecycle

import "github.com/ferrydr/ferry/controller/catalog"

// Update is `ferry machines update`. It is decided by its own table rather
// than a column of the action table: it changes the machine's settings,
// never its state, and only while replication runs forward from home do
// those settings mean what they say (a failed-over or reversed machine is
// replicated, or not, from the disks a job recorded).
const Update Action = "machines update"

// updates is Update's rule per state; a state not listed refuses with
// updateElsewhere.
var updates = map[string]Rule{
	catalog.StateSyncing:          allow(catalog.StateSyncing),
	catalog.StateProtected:        allow(catalog.StateProtected),
	catalog.StateTestFailedOver:   refuse("a test failover is running from its disks", "end it with 'ferry cleanup M' first"),
	catalog.StateFailedOver:       refuse("the machine runs at its target from a recovery point; its settings describe the home copy it may return to", "commit it (ferry commit M --force), re-protect and fail back first"),
	catalog.StateCommitted:        refuse("the failover was committed: nothing replicates the machine now", "re-protect it and bring it home (ferry reprotect M, ferry failback M) first"),
	catalog.StateReprotecting:     reprotectRuns,
	catalog.StateReverseProtected: refuse("the machine runs at its recovery site and replicates home from the disks re-protection recorded", "bring it home first (ferry failback M)"),
	catalog.StateFailingBack:      failbackRuns,
	catalog.StateFailedBack:       uncommittedBack,
	catalog.StateBackHome:         atHomeNoRepl,
	catalog.StateTestFailedBack:   homeTestRunning,
}

// CheckUpdate is Check for Update.
func CheckUpdate(machine, state string) error {
	r, ok := updates[state]
	if !ok {
		r = refuse("this version cannot change a machine in state "+state, "nothing to do")
	}
	if r.Allowed() {
		return nil
	}
	return &Refusal{Machine: machine, State: state, Action: Update, Reason: r.Reason,
		Instead: machineWord.ReplaceAllLiteralString(r.Instead, machine)}
}
