package failover

import "github.com/ferrydr/ferry/controller/lifecycle"

// commitKind is `ferry commit M`: the failover stays, the recovery points go.
var commitKind = kindDef{
	name: KindCommit, action: lifecycle.Commit,
	steps: func(Spec) []step {
		return []step{
			{StepPrerequisites, loadFailover},
			{StepCommit, commitPoints},
		}
	},
	set: liveSet, driverName: sameName,
}
