package controller

import (
	"regexp"

	"github.com/ferrydr/ferry/controller/catalog"
)

// notReplicating says, per machine state, why no cycle of the machine runs
// and what brings replication back; a state not listed replicates (from
// home: syncing, protected, test-failed-over; or home from the recovery
// site: reverse-protected, test-failed-back). Health judges a listed state
// a warning, never healthy: no new point arrives, so its RPO only grows.
var notReplicating = map[string]string{
	catalog.StateFailedOver:   "failed over, it runs at its recovery site and nothing replicates it (ferry commit M --force, then ferry reprotect M)",
	catalog.StateCommitted:    "committed at its recovery site, nothing replicates it (ferry reprotect M replicates it home)",
	catalog.StateReprotecting: "a re-protect job is moving its disks; replication starts when it ends",
	catalog.StateFailingBack:  "a failback job is moving it home",
	catalog.StateFailedBack:   "failed back home, nothing replicates it (ferry commit M --force, then ferry reprotect M)",
	catalog.StateBackHome:     "back home, nothing replicates it (ferry reprotect M replicates it to its recovery site)",
	catalog.StateUnprotected:  "unprotected",
}

// machineWord is the M that stands for the machine's name in the reasons.
var machineWord = regexp.MustCompile(`\bM\b`)

// replicationStopped is why a machine in this state does not replicate
// ("" when it does).
func replicationStopped(m catalog.Machine) string {
	if replicates(m.State) {
		return ""
	}
	if why, ok := notReplicating[m.State]; ok {
		return machineWord.ReplaceAllLiteralString(why, m.Name)
	}
	if m.Reversed() || m.AtRecovery() {
		return "" // the recovery site replicates it home (reverse-protected, test-failed-back)
	}
	return m.State + ", replication is stopped"
}
