package failover

import "github.com/ferrydr/ferry/controller/lifecycle"

// changePointKind is `ferry change-point M --point SPEC`: the target's
// writes are kept as a named point, then the live disks move to the other
// point and the machine starts again.
var changePointKind = kindDef{
	name: KindChangePoint, action: lifecycle.ChangePoint,
	steps: func(Spec) []step {
		return []step{
			{StepPrerequisites, prepareChangePoint},
			{StepStopTarget, stopTarget},
			{StepKeepWrites, keepWrites},
			{StepMove, moveInPlace},
			{StepStart, startTarget},
		}
	},
	set: liveSet, driverName: sameName,
	rollback: rollbackChangePoint,
}
