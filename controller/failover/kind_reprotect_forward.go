package failover

import "github.com/ferrydr/ferry/controller/lifecycle"

// reprotectForwardKind is `ferry reprotect M` after a planned failback:
// the machine at the recovery site is proven stopped, its disks become the
// staged replica at the failback's point, and home replicates again.
var reprotectForwardKind = kindDef{
	name: KindReprotectForward, action: lifecycle.Reprotect,
	steps: func(Spec) []step {
		return []step{
			{StepPrerequisites, prepareReprotectForward},
			{StepStopOtherSide, stopRecoverySide},
			{StepKeepRecovery, keepRecovery},
			{StepStageRecovery, stageRecovery},
			{StepProtected, forwardProtected},
		}
	},
	set: liveSet, driverName: sameName,
	allOrNothing: true,
}
