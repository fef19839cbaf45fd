package main

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestThreadStateReadsPastACommandNameWithParentheses(t *testing.T) {
	st, ok := threadState("4242 (ferry (agent) x) D 1 4242 4242 0 -1")
	require.True(t, ok)
	require.Equal(t, byte('D'), st)
	_, ok = threadState("4242 (truncated")
	require.False(t, ok)
}

// A sleeping child is sampled as neither running nor in uninterruptible
// sleep: the sampler reads real /proc entries, and counts what it read.
func TestOffCPUSamplesASleepingProcess(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	o := sampleOffCPU(context.Background(), 10*time.Millisecond, func() []int { return []int{cmd.Process.Pid} })
	require.Eventually(t, func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		return o.samples >= 5
	}, 10*time.Second, 10*time.Millisecond)
	got := o.finish()
	require.Regexp(t, `^\d+ thread samples, 0 running, 0 in uninterruptible sleep$`, got)
	require.Empty(t, o.blocked)
}
