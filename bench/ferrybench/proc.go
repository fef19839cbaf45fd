package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"syscall"
	"time"

	"github.com/ferrydr/ferry/internal/syncbuf"
)

// proc is a running Ferry process: stdout and stderr go to its log file,
// stdout is also kept for waitOutput.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	logf    *os.File
	stdout  syncbuf.Buffer
	done    chan struct{}
}

// startProc starts bin in its own process group, with env added to this
// process's environment. It is not tied to a context: stopping is explicit
// (SIGTERM, so a CPU profile is flushed).
func startProc(name, logPath string, env []string, bin string, args ...string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, logPath: logPath, logf: logf, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.cmd.Stdout = io.MultiWriter(logf, &p.stdout)
	p.cmd.Stderr = logf
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitOutput waits until stdout matches re and returns the submatches.
func (p *proc) waitOutput(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	var m []string
	err := poll(ctx, timeout, 20*time.Millisecond, func() (bool, error) {
		if m = re.FindStringSubmatch(p.stdout.String()); m != nil {
			return true, nil
		}
		if p.exited() {
			return false, fmt.Errorf("%s exited (log %s)", p.name, p.logPath)
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s never printed %s: %w", p.name, re, err)
	}
	return m, nil
}

// stop sends SIGTERM and waits; after grace it kills the process group.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// poll calls f every period until it reports done, fails, the timeout
// passes or ctx ends.
func poll(ctx context.Context, timeout, period time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		ok, err := f()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
