package failover

import "github.com/ferrydr/ferry/controller/lifecycle"

// failbackKind is `ferry failback M` (planned): stop the machine at the
// recovery site, take a final cycle there, move the home disks in place
// to it, start the machine at home. No write is lost.
var failbackKind = kindDef{
	name: KindFailback, action: lifecycle.Failback,
	steps: func(Spec) []step {
		return []step{
			{StepPrerequisites, prepareFailback},
			{StepStopRecovery, stopRecovery},
			{StepFinalCycle, finalReverseCycle},
			{StepMoveHome, moveHome},
			{StepStartHome, startHome},
		}
	},
	set: liveSet, driverName: sameName,
	allOrNothing: true,
	onFailure:    undoFailback,
}
