package failover

import "github.com/ferrydr/ferry/controller/lifecycle"

// Job kinds of the unplanned failback (roundtrip_unplanned.go).
const (
	// KindFailbackUnplanned is `ferry failback M --unplanned` or
	// `--point SPEC`: the home disks move to a point of the reverse
	// replication and the machine starts at home; it ends failed-back.
	KindFailbackUnplanned = "failback-unplanned"
	// KindChangePointHome is `ferry change-point M --point SPEC` of a
	// failed-back machine: the home disks move to another point.
	KindChangePointHome = "change-point-home"
)

// failbackUnplannedKind brings the machine home to a chosen point of the
// reverse replication (the newest by default) without a final cycle: the
// recovery site's copy is stopped when reachable, else fenced when it
// reconnects (fence.go). Never chosen automatically.
var failbackUnplannedKind = kindDef{
	name: KindFailbackUnplanned, action: lifecycle.UnplannedFailback,
	steps: func(Spec) []step {
		return []step{
			{StepPrerequisites, prepareUnplannedFailback},
			{StepStopRecovery, stopRecoveryUnplanned},
			{StepMoveHome, moveHome},
			{StepStartHome, startHomeUnplanned},
		}
	},
	set: liveSet, driverName: sameName,
	allOrNothing: true,
	onFailure:    undoUnplannedFailback,
}

// changePointHomeKind moves a failed-back machine's home disks to another
// point: the machine is stopped at home through its driver, the home disks
// as they are kept as home-divergent-<job>, moved in place (only blocks
// that differ), and the machine started again.
var changePointHomeKind = kindDef{
	name: KindChangePointHome, action: lifecycle.ChangePoint,
	steps: func(Spec) []step {
		return []step{
			{StepPrerequisites, prepareChangePointHome},
			{StepStopHome, stopHomeForChange},
			{StepKeepHome, keepHome},
			{StepMoveHome, moveHomeWritten},
			{StepStartHome, startHomeAgain},
		}
	},
	set: liveSet, driverName: sameName,
	onFailure: undoChangePointHome,
}
