package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// exampleDriver runs examples/drivers/NAME ACTION the way a target agent
// runs an exec driver (/bin/sh -c, FERRY_* in the environment) and returns
// its stdout; the command must end without waiting for what it started.
func exampleDriver(t *testing.T, env []string, script, action string) (string, error) {
	t.Helper()
	path, err := filepath.Abs(filepath.Join("..", "..", "examples", "drivers", script))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", path+" "+action)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, ctx.Err(), "%s %s did not return within 30 s (does it hold its output open?)", script, action)
	if err != nil {
		return string(out), &exampleError{err: err, stderr: stderr.String()}
	}
	return string(out), nil
}

type exampleError struct {
	err    error
	stderr string
}

func (e *exampleError) Error() string { return e.err.Error() + ": " + e.stderr }
func (e *exampleError) Unwrap() error { return e.err }

// TestExampleProcessDriver runs examples/drivers/process.sh through the exec
// driver contract: status absent; start returns while the machine runs,
// holding its disks open; status running; start again is a no-op; stop ends
// the process; status stopped; a missing disk fails start.
func TestExampleProcessDriver(t *testing.T) {
	dir := t.TempDir()
	d1, d2 := filepath.Join(dir, "d1.raw"), filepath.Join(dir, "d2.raw")
	require.NoError(t, os.WriteFile(d1, []byte("one"), 0o600))
	require.NoError(t, os.WriteFile(d2, []byte("two"), 0o600))
	machine := "web1-cli-" + strconv.Itoa(os.Getpid())
	env := []string{"PROCESS_DIR=" + filepath.Join(dir, "state"), "FERRY_MACHINE=" + machine,
		"FERRY_DISKS=" + d1 + "\n" + d2, "FERRY_TEST=0", "FERRY_CPUS=0", "FERRY_MEMORY=0", "FERRY_JOB=job-1"}
	pidOf := func() int {
		b, err := os.ReadFile(filepath.Join(dir, "state", machine, "pid"))
		require.NoError(t, err)
		pid, err := strconv.Atoi(strings.Fields(string(b))[0])
		require.NoError(t, err)
		return pid
	}
	alive := func(pid int) bool { return syscall.Kill(pid, 0) == nil && !zombie(pid) }

	out, err := exampleDriver(t, env, "process.sh", "status")
	require.NoError(t, err)
	require.Equal(t, "absent\n", out)

	_, err = exampleDriver(t, env, "process.sh", "start")
	require.NoError(t, err)
	pid := pidOf()
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	require.True(t, alive(pid), "the machine's process is not running after start")
	fds, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	require.NoError(t, err)
	var open []string
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + fd.Name()); err == nil {
			open = append(open, l)
		}
	}
	require.Contains(t, open, d1, "the stand-in does not hold the first disk open")
	require.Contains(t, open, d2, "the stand-in does not hold the second disk open")

	out, err = exampleDriver(t, env, "process.sh", "status")
	require.NoError(t, err)
	require.Equal(t, "running\n", out)
	_, err = exampleDriver(t, env, "process.sh", "start")
	require.NoError(t, err)
	require.Equal(t, pid, pidOf(), "a second start started another process")

	_, err = exampleDriver(t, env, "process.sh", "stop")
	require.NoError(t, err)
	require.False(t, alive(pid), "the machine's process still runs after stop")
	out, err = exampleDriver(t, env, "process.sh", "status")
	require.NoError(t, err)
	require.Equal(t, "stopped\n", out)
	_, err = exampleDriver(t, env, "process.sh", "stop")
	require.NoError(t, err, "stop of a stopped machine")

	bad := append(env[:len(env):len(env)], "FERRY_DISKS="+filepath.Join(dir, "missing.raw"))
	_, err = exampleDriver(t, bad, "process.sh", "start")
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "start with a missing disk must fail")
	require.Contains(t, err.Error(), "missing.raw")
	out, err = exampleDriver(t, env, "process.sh", "status")
	require.NoError(t, err)
	require.Equal(t, "stopped\n", out)
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return true
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "State:") {
			return strings.Contains(l, "Z")
		}
	}
	return false
}

// TestExampleDriversParse: every example driver is valid sh and answers an
// unknown action with its usage and exit 2 (libvirt.sh needs a libvirt
// daemon to run further; it is not started here).
func TestExampleDriversParse(t *testing.T) {
	for _, s := range []string{"process.sh", "libvirt.sh"} {
		path := filepath.Join("..", "..", "examples", "drivers", s)
		out, err := exec.Command("/bin/sh", "-n", path).CombinedOutput()
		require.NoError(t, err, "%s: %s", s, out)
		_, err = exampleDriver(t, []string{"FERRY_MACHINE=m"}, s, "frobnicate")
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee)
		require.Equal(t, 2, ee.ExitCode(), "%s", s)
		require.Contains(t, err.Error(), "usage:")
	}
}

// TestExampleProcessDriverFailsOver: a failover to a target whose exec
// driver is examples/drivers/process.sh brings the machine up as a process
// holding the live disk open, and that disk holds the bytes the test
// wrote; the machine shows as failed over.
func TestExampleProcessDriverFailsOver(t *testing.T) {
	s, img := protectedMachine(t, "web1")
	script, err := filepath.Abs(filepath.Join("..", "..", "examples", "drivers", "process.sh"))
	require.NoError(t, err)
	dir, state := t.TempDir(), t.TempDir()
	drv := "PROCESS_DIR=" + state + " " + script
	code, _, stderr := s.cli(t, "targets", "add", "dr1", "--agent", "host1", "--dir", dir, "--driver", "exec",
		"--start", drv+" start", "--stop", drv+" stop", "--status", drv+" status")
	require.Equal(t, exitOK, code, stderr)
	code, stdout, stderr := s.cli(t, "failover", "web1", "--target", "dr1", "--allow-inconsistent", "--wait") // a plain image file is read live
	require.Equal(t, exitOK, code, "failover: %s %s", stdout, stderr)
	b, err := os.ReadFile(filepath.Join(state, "web1", "pid"))
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.Fields(string(b))[0])
	require.NoError(t, err)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	require.False(t, zombie(pid), "the machine's process is not running")
	live, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/3")
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "web1", "live", "d.raw"), live, "the process holds another file than the live disk")
	want, err := os.ReadFile(img)
	require.NoError(t, err)
	got, err := os.ReadFile(live)
	require.NoError(t, err)
	require.True(t, len(got) == len(want) && string(got) == string(want), "the live disk differs from the bytes the test wrote")
}
