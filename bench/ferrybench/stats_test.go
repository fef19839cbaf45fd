package main

import (
	"time"

	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMedian(t *testing.T) {
	require.True(t, math.IsNaN(median(nil)))
	require.Equal(t, 3.0, median([]float64{5, 1, 3}))
	require.Equal(t, 2.5, median([]float64{4, 1, 3, 2}))
	xs := []float64{3, 1, 2}
	median(xs)
	require.Equal(t, []float64{3, 1, 2}, xs, "median must not reorder its input")
}

func TestPercentile(t *testing.T) {
	var xs []float64
	for i := 1; i <= 100; i++ {
		xs = append(xs, float64(101-i))
	}
	require.Equal(t, 50.0, percentile(xs, 50))
	require.Equal(t, 99.0, percentile(xs, 99))
	require.Equal(t, 100.0, percentile(xs, 100))
	require.Equal(t, 1.0, percentile(xs, 0.1))
	require.Equal(t, 7.0, percentile([]float64{7}, 99))
	require.True(t, math.IsNaN(percentile(nil, 99)))
}

func TestRowVerdicts(t *testing.T) {
	// Ratio rows: the target bounds the median of per-run ratios, which
	// differs from the ratio of the medians.
	r := row{Ferry: []float64{1, 10, 3}, Anchor: []float64{10, 10, 1}, Target: 1.0}
	require.InDelta(t, 1.0, r.ratio(), 1e-9)
	require.True(t, r.pass())
	r.Target = 0.99
	require.False(t, r.pass())

	abs := row{Ferry: []float64{6}, Target: 5}
	require.True(t, math.IsNaN(abs.ratio()))
	require.False(t, abs.pass())
	abs.Ferry = []float64{5}
	require.True(t, abs.pass())

	require.False(t, row{Target: 1}.pass(), "a row without figures must not pass")
}

func TestWriteTable(t *testing.T) {
	var b strings.Builder
	writeTable(&b, []row{
		{Case: "delta bytes", Unit: unitBytes, Ferry: []float64{60e6}, Anchor: []float64{240e6}, AnchorName: "rsync", Target: 0.25, TargetText: "≤ 0.25 × rsync"},
		{Case: "memory", Unit: unitMemory, Ferry: []float64{70 << 20}, Target: 68 << 20, TargetText: "≤ 68 MiB", Note: "peak"},
	})
	out := b.String()
	require.Contains(t, out, "| delta bytes | 60.0 MB | rsync 240.0 MB | 0.250 × | ≤ 0.25 × rsync | PASS |")
	require.Contains(t, out, "| memory | 70.0 MiB | — | — | ≤ 68 MiB | MISS |")
	require.Contains(t, out, "- memory: peak")
}

func TestTouchedBlocks(t *testing.T) {
	const bs = 64 << 10
	got := touchedBlocks([]int64{0, 4096, bs - 4096, bs + 8192, 3 * bs, 0}, 4096, bs)
	require.Equal(t, []int64{0, 1, 3}, got)
	// A write straddling a boundary touches both blocks.
	require.Equal(t, []int64{0, 1}, touchedBlocks([]int64{bs - 2048}, 4096, bs))
}

func TestBusyShare(t *testing.T) {
	// 3 core-seconds in 2 s on 2 cores: 75 % busy.
	require.Equal(t, 0.75, busyShare(3*time.Second, 2*time.Second, 2))
	require.Zero(t, busyShare(time.Second, 0, 2), "no wall time")
}

func TestProcStatSplitsBusyIdleAndIOWait(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	c, err := parseProcStat("cpu  300 10 90 500 40 5 3 2 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
	require.NoError(t, err)
	require.Equal(t, 4100*time.Millisecond, c.busy)
	require.Equal(t, 5*time.Second, c.idle)
	require.Equal(t, 400*time.Millisecond, c.iowait)

	_, err = parseProcStat("intr 1 2 3\n")
	require.ErrorContains(t, err, "not the cpu line")
}
