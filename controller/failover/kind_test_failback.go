package failover

import "github.com/ferrydr/ferry/controller/lifecycle"

// Failback test kinds (roundtrip_testfb.go).
const (
	// KindTestFailback is `ferry failback M --test`: a clone of the home
	// disks, moved to a fresh reverse point, started at home through the
	// home driver with FERRY_TEST=1. Nothing is stopped and the home
	// disks are only read.
	KindTestFailback = "test-failback"
	// KindCleanupTestFailback is `ferry cleanup M` of a failback test:
	// the test copy stops and its clone goes.
	KindCleanupTestFailback = "cleanup-test-failback"
)

// testFailbackKind: the machine keeps running at its recovery site and
// its replication home goes on; the home disks are only read.
var testFailbackKind = kindDef{
	name: KindTestFailback, action: lifecycle.TestFailback,
	steps: func(Spec) []step {
		return []step{
			{StepPrerequisites, prepareTestFailback},
			{StepProcess, reverseTestPoint},
			{StepClone, cloneHome},
			{StepMove, moveHomeClone},
			{StepStartHome, startHomeTest},
		}
	},
	set: testSet, driverName: testName,
	test:      true,
	onFailure: undoTestFailback,
}

// cleanupTestFailbackKind ends a failback test.
var cleanupTestFailbackKind = kindDef{
	name: KindCleanupTestFailback, action: lifecycle.Cleanup,
	steps: func(Spec) []step {
		return []step{
			{StepStopTest, stopHomeTest},
			{StepRemoveTest, removeHomeTest},
		}
	},
	set: testSet, driverName: testName,
	test: true,
}
