package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// offCPU samples, from outside, what the threads of some processes are
// doing: every interval, each thread's scheduler state and, for a thread in
// uninterruptible sleep, the kernel function it sleeps in
// (/proc/PID/task/TID/wchan). It is the blocking profile of a phase whose
// cores are not all busy: which lock or wait holds the threads that are
// neither running nor idle by choice. Sampling costs the bench process a
// few directory reads per thread per interval.
type offCPU struct {
	mu      sync.Mutex
	samples int            // thread samples taken
	running int            // of which in state R
	blocked map[string]int // state D, by wchan
	stop    context.CancelFunc
	done    chan struct{}
}

// sampleOffCPU starts sampling the threads of the processes pids() names
// (asked again each interval: processes may restart) until stop is called.
func sampleOffCPU(ctx context.Context, every time.Duration, pids func() []int) *offCPU {
	ctx, cancel := context.WithCancel(ctx)
	o := &offCPU{blocked: map[string]int{}, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			for _, pid := range pids() {
				o.sample(pid)
			}
		}
	}()
	return o
}

// sample reads each thread of pid once; threads that exit meanwhile are
// skipped.
func (o *offCPU) sample(pid int) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	if err != nil {
		return
	}
	for _, task := range tasks {
		stat, err := os.ReadFile(filepath.Join(task, "stat"))
		if err != nil {
			continue
		}
		state, ok := threadState(string(stat))
		if !ok {
			continue
		}
		var wchan string
		if state == 'D' {
			b, err := os.ReadFile(filepath.Join(task, "wchan"))
			if err != nil {
				continue
			}
			wchan = strings.TrimSpace(string(b))
			if wchan == "" || wchan == "0" {
				wchan = "(unknown)"
			}
		}
		o.mu.Lock()
		o.samples++
		switch state {
		case 'R':
			o.running++
		case 'D':
			o.blocked[wchan]++
		}
		o.mu.Unlock()
	}
}

// threadState is the state letter of a /proc/.../stat line: the field
// after the command name, which is in parentheses and may hold spaces.
func threadState(stat string) (byte, bool) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return 0, false
	}
	return stat[i+2], true
}

// finish stops the sampling and says what it saw: samples, running,
// uninterruptible and the top wchans of the uninterruptible ones.
func (o *offCPU) finish() string {
	o.stop()
	<-o.done
	o.mu.Lock()
	defer o.mu.Unlock()
	type waited struct {
		wchan string
		n     int
	}
	var ws []waited
	d := 0
	for w, n := range o.blocked {
		ws = append(ws, waited{w, n})
		d += n
	}
	slices.SortFunc(ws, func(a, b waited) int { return cmp.Or(b.n-a.n, strings.Compare(a.wchan, b.wchan)) })
	top := make([]string, 0, 4)
	for _, w := range ws[:min(4, len(ws))] {
		top = append(top, fmt.Sprintf("%s %d", w.wchan, w.n))
	}
	s := fmt.Sprintf("%d thread samples, %d running, %d in uninterruptible sleep", o.samples, o.running, d)
	if len(top) > 0 {
		s += " (" + strings.Join(top, ", ") + ")"
	}
	return s
}
