package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// Power states a driver's status reports.
const (
	StatusRunning = "running"
	StatusStopped = "stopped"
	StatusAbsent  = "absent"
)

// Actions a driver performs.
const (
	ActionStart  = "start"
	ActionStop   = "stop"
	ActionPause  = "pause"
	ActionResume = "resume"
	ActionStatus = "status"
)

// DefaultTimeout bounds every command (CLI.md: 5 min).
const DefaultTimeout = 5 * time.Minute

// ErrNotConfigured means the driver has no command for an action.
var ErrNotConfigured = errors.New("driver action not configured")

// Commands are an exec driver's shell commands.
type Commands struct {
	Start, Stop, Pause, Resume, Status string
}

// Exec is the exec driver: each action runs its shell command with the
// job's context in the environment.
type Exec struct {
	Commands Commands
	Env      map[string]string // FERRY_MACHINE, FERRY_JOB, … (added to the process environment)
	Timeout  time.Duration     // per command; 0 = DefaultTimeout
}

// CommandError is a failed driver command.
type CommandError struct {
	Action string
	Cmd    string
	Output string
	Err    error
}

func (e *CommandError) Error() string {
	out := strings.TrimSpace(e.Output)
	if len(out) > 400 {
		out = "…" + out[len(out)-400:]
	}
	if out != "" {
		return fmt.Sprintf("driver %s (%s): %v: %s", e.Action, e.Cmd, e.Err, out)
	}
	return fmt.Sprintf("driver %s (%s): %v", e.Action, e.Cmd, e.Err)
}

func (e *CommandError) Unwrap() error { return e.Err }

// Has reports whether an action is configured.
func (d *Exec) Has(action string) bool { return d.command(action) != "" }

func (d *Exec) command(action string) string {
	switch action {
	case ActionStart:
		return d.Commands.Start
	case ActionStop:
		return d.Commands.Stop
	case ActionPause:
		return d.Commands.Pause
	case ActionResume:
		return d.Commands.Resume
	case ActionStatus:
		return d.Commands.Status
	}
	return ""
}

// Run performs an action and returns its output.
func (d *Exec) Run(ctx context.Context, action string) (string, error) {
	cmd := d.command(action)
	if cmd == "" {
		return "", fmt.Errorf("%s: %w", action, ErrNotConfigured)
	}
	return RunShell(ctx, cmd, d.Env, d.timeout(), action)
}

// Status runs the status command and parses running, stopped or absent.
func (d *Exec) Status(ctx context.Context) (string, error) {
	out, err := d.Run(ctx, ActionStatus)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(out)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = strings.TrimSpace(s[i+1:]) // the last line is the answer
	}
	switch s {
	case StatusRunning, StatusStopped, StatusAbsent:
		return s, nil
	}
	return "", &CommandError{Action: ActionStatus, Cmd: d.Commands.Status, Output: out,
		Err: fmt.Errorf("printed %q, want running, stopped or absent", s)}
}

func (d *Exec) timeout() time.Duration {
	if d.Timeout > 0 {
		return d.Timeout
	}
	return DefaultTimeout
}

// shellCommand is a command line run through the platform shell (sh -c,
// or cmd.exe /C on Windows) with env added to this process's environment.
// On timeout the whole process group is killed, so a shell's children do
// not outlive it, and Wait does not wait forever on pipes they hold open.
func shellCommand(ctx context.Context, line string, env map[string]string) *exec.Cmd {
	var c *exec.Cmd
	if runtime.GOOS == "windows" {
		c = exec.CommandContext(ctx, "cmd.exe", "/C", line)
	} else {
		c = exec.CommandContext(ctx, "/bin/sh", "-c", line)
	}
	c.Env = os.Environ()
	for k, v := range env {
		c.Env = append(c.Env, k+"="+v)
	}
	setProcessGroup(c)
	c.WaitDelay = 2 * time.Second
	return c
}

// RunShell runs a command line through the platform shell with extra
// environment and a timeout; a timeout counts as failure.
func RunShell(ctx context.Context, line string, env map[string]string, timeout time.Duration, what string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := shellCommand(ctx, line, env)
	var out bytes.Buffer
	c.Stdout = &out
	c.Stderr = &out
	err := c.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("timed out after %s", timeout)
	}
	if err != nil {
		return out.String(), &CommandError{Action: what, Cmd: line, Output: out.String(), Err: err}
	}
	return out.String(), nil
}
