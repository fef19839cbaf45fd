package console

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// TestRPOHistory: the RPO at each sample is the age of the newest point
// taken by then; before the first point there is none.
func TestRPOHistory(t *testing.T) {
	now := time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)
	pts := []api.Point{ // out of order on purpose
		{ID: 2, Time: now.Add(-30 * time.Minute)},
		{ID: 1, Time: now.Add(-100 * time.Minute)},
	}
	// 4 samples over 2 h: at -90, -60, -30 and 0 minutes.
	got := rpoHistory(pts, now, 2*time.Hour, 4)
	require.Len(t, got, 4)
	require.Equal(t, (10 * time.Minute).Seconds(), got[0])
	require.Equal(t, (40 * time.Minute).Seconds(), got[1])
	require.Equal(t, 0.0, got[2], "a point at the sample's instant")
	require.Equal(t, (30 * time.Minute).Seconds(), got[3], "the last sample is the RPO now")

	early := rpoHistory(pts, now, 4*time.Hour, 4) // at -180, -120, -60, 0
	require.True(t, math.IsNaN(early[0]) && math.IsNaN(early[1]), "no RPO before the first point")
	require.Equal(t, (40 * time.Minute).Seconds(), early[2])

	svg := string(sparkline(got, (20 * time.Minute).Seconds(), 2*time.Hour))
	require.Contains(t, svg, "<title>RPO over the last 2h: highest 40m</title>")
	require.Contains(t, svg, `class="threshold"`)
	require.Equal(t, 4, strings.Count(strings.SplitN(strings.SplitN(svg, `points="`, 2)[1], `"`, 2)[0], ",")) // 4 x,y pairs
	require.Contains(t, string(sparkline(early, 0, 4*time.Hour)), "<circle")
}

func TestFmtDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		3 * time.Hour: "3h", 90 * time.Minute: "1h30m", 2 * time.Minute: "2m", 125 * time.Second: "2m5s",
		4500 * time.Millisecond: "4.5s", 10 * time.Hour: "10h",
	} {
		require.Equal(t, want, fmtDuration(d), "%v", d)
	}
}
