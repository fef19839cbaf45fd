package failover

import "github.com/ferrydr/ferry/controller/lifecycle"

// KindRevert is `ferry revert M`: undo an uncommitted failover.
const KindRevert = "revert"

// revertKind is `ferry revert M`: the machine stops at its recovery site,
// the writes made there are kept as a named point, and it starts at home
// on its home disks — which a failover never changes — and replicates from
// there again, starting with a cycle now. A revert that does not complete leaves the machine failed
// over, running at the recovery site again unless it was started at home.
var revertKind = kindDef{
	name: KindRevert, action: lifecycle.Revert,
	steps: func(Spec) []step {
		return []step{
			{StepPrerequisites, prepareRevert},
			{StepStopTarget, stopTarget},
			{StepKeepWrites, keepWrites},
			{StepStartHome, startHomeRevert},
			{StepReleaseTarget, releaseTarget},
			{StepProtected, revertedProtected},
			{StepHomeCycle, homeCycle},
		}
	},
	set: liveSet, driverName: sameName,
	onFailure: undoRevert,
}
