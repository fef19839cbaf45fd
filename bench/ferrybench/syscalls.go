package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Off-CPU time the blocking profile cannot show: a goroutine in a system
// call (fsync, a cold read, a reflink clone) is not blocked on a channel or
// a lock, so the profile lists only idle loops while a core waits on the
// disk. `perf trace -s` over the profiled phase gives, per process, the
// time spent in each system call.

// syscallTrace is a `perf trace -s` attached to processes until stop.
type syscallTrace struct {
	cmd  *exec.Cmd
	path string
}

// startSyscallTrace attaches perf trace to pids, writing its summary to
// path; without perf it returns nil and no error (the report says so).
func startSyscallTrace(pids []int, path string) (*syscallTrace, error) {
	if _, err := exec.LookPath("perf"); err != nil {
		return nil, nil
	}
	ps := make([]string, len(pids))
	for i, p := range pids {
		ps[i] = strconv.Itoa(p)
	}
	cmd := exec.Command("perf", "trace", "-s", "-p", strings.Join(ps, ","), "-o", path)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf trace: %w", err)
	}
	return &syscallTrace{cmd: cmd, path: path}, nil
}

// stop ends the trace and returns its summary, top n calls by total time
// per process.
func (t *syscallTrace) stop(n int) (string, error) {
	if t == nil {
		return "perf is not installed: no system-call times", nil
	}
	_ = t.cmd.Process.Signal(syscall.SIGINT)
	_ = t.cmd.Wait() // perf exits non-zero on SIGINT
	f, err := os.Open(t.path)
	if err != nil {
		return "", fmt.Errorf("perf trace summary: %w", err)
	}
	defer f.Close()
	sums, err := parseTraceSummary(f)
	if err != nil {
		return "", err
	}
	return formatSyscalls(sums, n), nil
}

// syscallSum is one process's time in one system call, over its threads.
type syscallSum struct {
	proc, call string
	calls      int
	ms         float64
}

// parkingCalls are how the Go runtime parks and polls: idle goroutines and
// threads wait in them the whole run, so they say nothing of the work.
var parkingCalls = []string{"futex", "epoll_pwait", "epoll_wait", "nanosleep", "clock_nanosleep", "sched_yield", "rt_sigreturn", "waitid", "wait4"}

// parseTraceSummary reads `perf trace -s` output: a header per thread
// (" name (tid), N events, P%") followed by rows of "call calls errors
// total min avg max stddev". Threads of a process share its name.
func parseTraceSummary(r io.Reader) ([]syscallSum, error) {
	byKey := map[[2]string]*syscallSum{}
	proc := ""
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		f := strings.Fields(line)
		if len(f) >= 3 && strings.HasPrefix(f[1], "(") && strings.HasSuffix(f[1], "),") {
			proc = f[0]
			continue
		}
		if proc == "" || len(f) < 4 {
			continue
		}
		calls, err1 := strconv.Atoi(f[1])
		ms, err2 := strconv.ParseFloat(f[3], 64)
		if err1 != nil || err2 != nil {
			continue // column titles and rules
		}
		k := [2]string{proc, f[0]}
		s := byKey[k]
		if s == nil {
			s = &syscallSum{proc: proc, call: f[0]}
			byKey[k] = s
		}
		s.calls += calls
		s.ms += ms
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var out []syscallSum
	for _, s := range byKey {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b syscallSum) int {
		if c := strings.Compare(a.proc, b.proc); c != 0 {
			return c
		}
		switch {
		case a.ms > b.ms:
			return -1
		case a.ms < b.ms:
			return 1
		}
		return strings.Compare(a.call, b.call)
	})
	return out, nil
}

// formatSyscalls lists each process's top n calls by total time, the
// runtime's parking calls left out.
func formatSyscalls(sums []syscallSum, n int) string {
	var b strings.Builder
	shown := map[string]int{}
	for _, s := range sums {
		if slices.Contains(parkingCalls, s.call) || shown[s.proc] >= n {
			continue
		}
		shown[s.proc]++
		fmt.Fprintf(&b, "%-14s %-18s %8d calls %10.1f ms\n", s.proc, s.call, s.calls, s.ms)
	}
	if b.Len() == 0 {
		return "no system calls traced"
	}
	return b.String()
}
