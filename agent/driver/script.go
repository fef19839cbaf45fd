package driver

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"time"
)

// MaxScriptOutput bounds the output a script run keeps: its tail, since a
// failing script says why at the end.
const MaxScriptOutput = 64 << 10

// ScriptResult is a finished script: the tail of its combined output, its
// exit code (-1 when it did not exit by itself: a timeout, a kill, a shell
// that did not start) and whether output was dropped.
type ScriptResult struct {
	Output    string
	ExitCode  int
	Truncated bool
}

// RunScript runs a command line through the platform shell (sh -c, or
// cmd.exe /C on Windows) with env added to this process's environment. On
// timeout or when ctx ends, the whole process group is killed. A non-zero
// exit, a timeout or a start failure is an error; the result is filled
// either way.
func RunScript(ctx context.Context, line string, env map[string]string, timeout time.Duration) (ScriptResult, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := shellCommand(ctx, line, env)
	out := &tailBuffer{max: MaxScriptOutput}
	c.Stdout, c.Stderr = out, out
	err := c.Run()
	res := ScriptResult{ExitCode: -1}
	res.Output, res.Truncated = out.String()
	var ee *exec.ExitError
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		err = fmt.Errorf("timed out after %s", timeout)
	case errors.As(err, &ee) && ee.Exited():
		res.ExitCode = ee.ExitCode()
		err = fmt.Errorf("exit status %d", res.ExitCode)
	case err == nil:
		res.ExitCode = 0
	}
	return res, err
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu      sync.Mutex
	max     int
	buf     []byte
	dropped bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) >= t.max {
		t.dropped = t.dropped || len(t.buf) > 0 || len(p) > t.max
		t.buf = append(t.buf[:0], p[len(p)-t.max:]...)
		return n, nil
	}
	if over := len(t.buf) + len(p) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.dropped = true
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

func (t *tailBuffer) String() (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf), t.dropped
}
