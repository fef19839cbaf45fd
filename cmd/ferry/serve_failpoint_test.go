package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestFailpointEnvIsParsedStrictly: FERRY_TEST_FAILPOINT takes a known
// name with an optional hit count; anything else is refused with the
// known names, and hits before the selected one pass.
func TestFailpointEnvIsParsedStrictly(t *testing.T) {
	for _, bad := range []string{"nope", "job.step-done#0", "job.step-done#x", "job.step-done#"} {
		_, err := failpointHooks(bad, &bytes.Buffer{})
		require.Error(t, err, bad)
	}
	var out bytes.Buffer
	h, err := failpointHooks("job.step-done#3", &out)
	require.NoError(t, err)
	h.Failpoint("job.step-done")
	h.Failpoint("job.step-running")
	h.Failpoint("job.step-done")
	require.Empty(t, out.String(), "the first two hits and other names pass")
	require.Nil(t, h.BeforeStep)
}
