package failover

import "github.com/ferrydr/ferry/controller/lifecycle"

// reprotectKind is `ferry reprotect M` after a committed failover: the
// home machine is proven stopped (or declared off), the home disks are
// kept as a point and adopted where they are, the recovery agent becomes
// the source, and the home disks move in place to its first point.
var reprotectKind = kindDef{
	name: KindReprotect, action: lifecycle.Reprotect,
	steps: func(Spec) []step {
		return []step{
			{StepPrerequisites, prepareReprotect},
			{StepStopOtherSide, stopHomeSide},
			{StepAdoptHome, adoptHome},
			{StepKeepHome, keepHome},
			{StepStartReverse, startReverse},
			{StepMoveHome, moveHome},
			{StepProtected, reverseProtected},
		}
	},
	set: liveSet, driverName: sameName,
	allOrNothing: true,
	onFailure:    undoReverse,
}
