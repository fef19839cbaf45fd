package failover

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrydr/ferry/protocol"
)

// Step names, as jobs record them and the CLI shows them. Each is defined
// here once; a kind's file lists the steps it runs.
const (
	StepPrerequisites  = "prerequisites"
	StepShutdownSource = "shutdown-source"
	StepProcess        = "process"
	StepStopSource     = "stop-source"
	StepFinalCycle     = "final-cycle"
	StepPowerOff       = "power-off"
	StepClone          = "clone"
	StepMove           = "move"
	StepStart          = "start"
	StepStopTarget     = "stop-target"
	StepKeepWrites     = "keep-writes"
	StepCommit         = "commit"
	StepStopTest       = "stop-test"
	StepRemoveTest     = "remove-test"
	// The round trip (roundtrip.go).
	StepStopOtherSide = "stop-other-side"
	StepAdoptHome     = "adopt-home"
	StepKeepHome      = "keep-home"
	StepStartReverse  = "start-reverse"
	StepMoveHome      = "move-home"
	StepProtected     = "protected"
	StepStageRecovery = "stage-recovery"
	StepStopRecovery  = "stop-recovery"
	StepStartHome     = "start-home"
	// The unplanned failback (roundtrip_unplanned.go).
	StepStopHome     = "stop-home"
	StepKeepRecovery = "keep-recovery"
)

// stepFunc runs one step for one machine of a job. It must be idempotent:
// a step interrupted by a restart or failed with a retryable error runs
// again from its beginning.
type stepFunc func(ctx context.Context, j *job, name string, md *machineData) error

// step is a named step of a kind's list.
type step struct {
	name string
	run  stepFunc
}

// Refusal is a step failure that retrying cannot fix: a precondition the
// job found false. It keeps the error that made it, if any.
type Refusal struct {
	Msg string
	Err error
}

func (e *Refusal) Error() string {
	if e.Err != nil && e.Msg == "" {
		return e.Err.Error()
	}
	return e.Msg
}

func (e *Refusal) Unwrap() error { return e.Err }

// Retryable reports false: the job fails at once.
func (e *Refusal) Retryable() bool { return false }

// refuse makes a *Refusal; a %w argument stays in its chain.
func refuse(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &Refusal{Msg: err.Error(), Err: errors.Unwrap(err)}
}

// unavailable is a retryable error: an agent is not connected.
func unavailable(format string, args ...any) error {
	return protocol.Errorf(protocol.CodeUnavailable, format, args...)
}
