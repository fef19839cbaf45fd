package failover

import "github.com/ferrydr/ferry/controller/lifecycle"

// testFailoverKind is `ferry failover M --test`: a clone of the staged
// replica started isolated under a test name while replication goes on.
var testFailoverKind = kindDef{
	name: KindTest, action: lifecycle.TestFailover,
	steps: func(Spec) []step {
		return []step{
			{StepPrerequisites, prepareFailover},
			{StepProcess, processLatest},
			{StepClone, cloneStaged},
			{StepMove, moveInPlace},
			{StepStart, startTarget},
		}
	},
	set: testSet, driverName: testName,
	test:            true,
	rollback:        rollbackTest,
	revertOnFailure: true,
}
