package installer

import "errors"

// Sentinels callers branch on.
var (
	// ErrNotPrivileged means installing a service needs root (Administrator
	// on Windows).
	ErrNotPrivileged = errors.New("installing or removing a service needs root (an elevated prompt on Windows)")
	// ErrUnsupportedSystem means the host's service manager is not one
	// Ferry installs into (systemd, SysV, Windows).
	ErrUnsupportedSystem = errors.New("unsupported service manager")
	// ErrNotInstalled means no agent service of that name is installed.
	ErrNotInstalled = errors.New("the agent service is not installed")
	// ErrTokenRequired means the agent is not enrolled and no token was given.
	ErrTokenRequired = errors.New("the agent is not enrolled: --controller and --token are required")
)

// PathError is a failed step on a file of the installation.
type PathError struct {
	Op   string
	Path string
	Err  error
}

func (e *PathError) Error() string { return e.Op + " " + e.Path + ": " + e.Err.Error() }
func (e *PathError) Unwrap() error { return e.Err }

// StepError is a failed installation step, after which Install undid what
// it had done (Undone lists it; UndoErrors what could not be undone).
type StepError struct {
	Step       string
	Err        error
	Undone     []string
	UndoErrors []error
}

func (e *StepError) Error() string {
	msg := e.Step + ": " + e.Err.Error()
	if len(e.UndoErrors) > 0 {
		msg += "; and undoing failed: " + errors.Join(e.UndoErrors...).Error()
	}
	return msg
}
func (e *StepError) Unwrap() error { return e.Err }
