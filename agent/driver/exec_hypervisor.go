package driver

import (
	"context"
	"errors"
	"maps"
	"time"
)

// ExecHypervisor is the exec driver behind the Hypervisor interface: each
// operation runs the configured shell command with spec.Env (the FERRY_*
// context) added to the environment, exactly as Exec does. Remove runs the
// stop command (exec has no definitions to delete) when one is configured.
type ExecHypervisor struct {
	Commands Commands
	Timeout  time.Duration // per command; 0 = DefaultTimeout
}

var _ Hypervisor = (*ExecHypervisor)(nil)

func (h *ExecHypervisor) exec(spec Spec) *Exec {
	return &Exec{Commands: h.Commands, Env: maps.Clone(spec.Env), Timeout: h.Timeout}
}

func (h *ExecHypervisor) run(ctx context.Context, spec Spec, action string) error {
	_, err := h.exec(spec).Run(ctx, action)
	return classifyExec(action, err)
}

// Start runs the start command.
func (h *ExecHypervisor) Start(ctx context.Context, spec Spec) error {
	return h.run(ctx, spec, ActionStart)
}

// Stop runs the stop command.
func (h *ExecHypervisor) Stop(ctx context.Context, spec Spec) error {
	return h.run(ctx, spec, ActionStop)
}

// Pause runs the pause command.
func (h *ExecHypervisor) Pause(ctx context.Context, spec Spec) error {
	return h.run(ctx, spec, ActionPause)
}

// Resume runs the resume command.
func (h *ExecHypervisor) Resume(ctx context.Context, spec Spec) error {
	return h.run(ctx, spec, ActionResume)
}

// Status runs the status command.
func (h *ExecHypervisor) Status(ctx context.Context, spec Spec) (string, error) {
	s, err := h.exec(spec).Status(ctx)
	return s, classifyExec(ActionStatus, err)
}

// Remove runs the stop command when there is one.
func (h *ExecHypervisor) Remove(ctx context.Context, spec Spec) error {
	if !h.exec(spec).Has(ActionStop) {
		return nil
	}
	return h.run(ctx, spec, ActionStop)
}

// classifyExec: a command's own failure is not classified (the admin's
// script knows why; it is not retried), an unconfigured action is invalid,
// a command cut off by its timeout is a timeout.
func classifyExec(action string, err error) error {
	if err == nil {
		return nil
	}
	kind := KindUnknown
	switch {
	case errors.Is(err, ErrNotConfigured):
		kind = KindInvalid
	case errors.Is(err, context.DeadlineExceeded):
		kind = KindTimeout
	}
	return &Error{Driver: "exec", Op: action, Kind: kind, Err: err}
}
