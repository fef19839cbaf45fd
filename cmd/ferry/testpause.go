package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// pauseEnv names a job step before which `ferry serve` holds until a file
// exists, as STEP:FILE: crash tests (internal/e2e/roundtrip_kills_test.go)
// hold a job there to kill a process at a known moment. It prints "test
// pause before step STEP of job ID: holding until FILE exists" to w when
// it gets there (its first hit only).
const pauseEnv = "FERRY_TEST_PAUSE"

// pauseBeforeStep parses a pauseEnv value into a jobs.Hooks.BeforeStep.
func pauseBeforeStep(v string, w io.Writer) (func(ctx context.Context, job, step string) error, error) {
	name, file, ok := strings.Cut(v, ":")
	if !ok || name == "" || file == "" {
		return nil, fmt.Errorf("%q: want STEP:FILE", v)
	}
	var mu sync.Mutex
	done := false
	return func(ctx context.Context, job, step string) error {
		if step != name {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if done {
			return nil
		}
		done = true
		fmt.Fprintf(w, "test pause before step %s of job %s: holding until %s exists\n", name, job, file)
		for {
			if _, err := os.Stat(file); err == nil {
				fmt.Fprintf(w, "test pause before step %s: released\n", name)
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}, nil
}
