package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// An excerpt of `perf trace -s` over a plan: two threads of the agent and
// one of the controller.
const traceSummary = `
 Summary of events:

 ferry-agent (4131), 10940 events, 4.6%

   syscall            calls  errors  total       min       avg       max       stddev
                                     (msec)    (msec)    (msec)    (msec)        (%)
   --------------- --------  ------ -------- --------- --------- ---------     ------
   futex                715     93  2786.880     0.000     3.898   722.556     28.87%
   fsync                 45      0   254.438     0.009     5.654    35.728     21.68%
   pread64              226      0   141.717     0.065     0.627     5.200      8.85%


 ferry-agent (4132), 6908 events, 2.9%

   syscall            calls  errors  total       min       avg       max       stddev
                                     (msec)    (msec)    (msec)    (msec)        (%)
   --------------- --------  ------ -------- --------- --------- ---------     ------
   pread64              177      0   113.443     0.011     0.641     5.885      9.08%
   fsync                 10      0    87.524     0.352     8.752    38.808     45.38%

 ferry (4200), 100 events, 1.0%

   syscall            calls  errors  total       min       avg       max       stddev
                                     (msec)    (msec)    (msec)    (msec)        (%)
   --------------- --------  ------ -------- --------- --------- ---------     ------
   fsync                 30      0    70.000     0.352     8.752    38.808     45.38%
`

func TestParseTraceSummarySumsThreadsPerProcess(t *testing.T) {
	sums, err := parseTraceSummary(strings.NewReader(traceSummary))
	require.NoError(t, err)
	want := []syscallSum{
		{proc: "ferry", call: "fsync", calls: 30, ms: 70},
		{proc: "ferry-agent", call: "futex", calls: 715, ms: 2786.88},
		{proc: "ferry-agent", call: "fsync", calls: 55, ms: 254.438 + 87.524},
		{proc: "ferry-agent", call: "pread64", calls: 403, ms: 141.717 + 113.443},
	}
	require.Len(t, sums, len(want))
	for i, w := range want {
		got := sums[i]
		require.Equal(t, [3]any{w.proc, w.call, w.calls}, [3]any{got.proc, got.call, got.calls}, "row %d", i)
		require.InDelta(t, w.ms, got.ms, 1e-6, "row %d", i)
	}
	out := formatSyscalls(sums, 1)
	require.NotContains(t, out, "futex", "the runtime's parking is left out")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2, "one line per process at n=1:\n%s", out)
	require.Contains(t, lines[1], "fsync")
	require.Contains(t, lines[1], "342.0 ms")
}
