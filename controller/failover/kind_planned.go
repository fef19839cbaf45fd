package failover

import "github.com/ferrydr/ferry/controller/lifecycle"

// plannedFailoverKind is `ferry failover M --planned`: stop the source,
// take a final cycle, fail over to it; no write is lost.
var plannedFailoverKind = kindDef{
	name: KindPlanned, action: lifecycle.PlannedFailover,
	steps: func(Spec) []step {
		return []step{
			{StepPrerequisites, prepareFailover},
			{StepStopSource, stopSource},
			{StepFinalCycle, finalCycle},
			{StepPowerOff, powerOff},
			{StepMove, moveAndPromote},
			{StepStart, startTarget},
		}
	},
	set: liveSet, driverName: sameName,
	pausesReplication: true,
	precheck:          requirePlannedSource,
	allOrNothing:      true,
	rollback:          rollbackLive,
	// In a plan: sources stop group by group in reverse order, then every
	// disk moves; only then do the groups start, in order.
	planPhases: &planPhases{
		stop:  []string{StepPrerequisites, StepStopSource},
		move:  []string{StepFinalCycle, StepPowerOff, StepMove},
		start: []string{StepStart},
	},
	revertOnFailure: true, resyncOnFailure: true, restartSource: true,
}
