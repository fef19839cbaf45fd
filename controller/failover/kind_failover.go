package failover

import "github.com/ferrydr/ferry/controller/lifecycle"

// failoverKind is an unplanned failover: `ferry failover M`.
var failoverKind = kindDef{
	name: KindFailover, action: lifecycle.Failover,
	steps: func(s Spec) []step {
		steps := []step{{StepPrerequisites, prepareFailover}}
		if s.Req.ShutdownSource {
			steps = append(steps, step{StepShutdownSource, shutdownSource})
		}
		return append(steps,
			step{StepProcess, processLatest},
			step{StepMove, moveAndPromote},
			step{StepStart, startTarget})
	},
	set: liveSet, driverName: sameName,
	pausesReplication: true,
	rollback:          rollbackLive,
	revertOnFailure:   true, resyncOnFailure: true,
}
