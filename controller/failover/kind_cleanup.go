package failover

import "github.com/ferrydr/ferry/controller/lifecycle"

// cleanupKind is `ferry cleanup M`: the test machine stops and its disks go.
var cleanupKind = kindDef{
	name: KindCleanup, action: lifecycle.Cleanup,
	steps: func(Spec) []step {
		return []step{
			{StepStopTest, stopTest},
			{StepRemoveTest, removeTest},
		}
	},
	set: testSet, driverName: testName,
}
