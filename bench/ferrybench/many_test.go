package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestCommitsBetween(t *testing.T) {
	log := filepath.Join(t.TempDir(), "controller-1.log")
	require.NoError(t, os.WriteFile(log, []byte(`time=2026-12-04T10:00:00.000Z level=DEBUG msg="cycle begins" machine=m01 pending=1
time=2026-12-04T10:00:00.500Z level=INFO msg="point committed" machine=m01 point=1
time=2026-12-04T10:00:04.900Z level=DEBUG msg="cycle begins" machine=m02 pending=7
time=2026-12-04T10:00:05.000Z level=DEBUG msg="cycle begins" machine=m01 pending=2
time=2026-12-04T10:00:05.100Z level=INFO msg="point committed" machine=m02 point=7
time=2026-12-04T10:00:05.250Z level=INFO msg="point committed" machine=m01 point=2
time=2026-12-04T10:00:10.000Z level=INFO msg="point committed" machine=m02 point=8
`), 0o644))
	lines, err := readLog(log, "cycle begins", "point committed")
	require.NoError(t, err)
	from := time.Date(2026, 12, 4, 10, 0, 1, 0, time.UTC)
	to := time.Date(2026, 12, 4, 10, 0, 10, 0, time.UTC)
	per, cycles := commitsBetween(lines, from, to)
	require.Equal(t, map[string]int{"m01": 1, "m02": 1}, per, "the commit at 0.5 s is before the window, the one at 10 s is at its end")
	require.InDeltaSlice(t, []float64{0.2, 0.25}, cycles, 1e-9)
	require.Equal(t, 2, total(per))
}
