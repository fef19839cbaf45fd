package points

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/storage"
)

// TestLatestSkipsDamagedPoints: latest* never picks a point that reads
// damaged data; an id still names it.
func TestLatestSkipsDamagedPoints(t *testing.T) {
	pts := []storage.Point{
		{ID: 1, Consistency: storage.AppConsistent},
		{ID: 2, Consistency: storage.CrashConsistent},
		{ID: 3, Consistency: storage.AppConsistent, Damaged: true},
		{ID: 4, Consistency: storage.CrashConsistent, Damaged: true},
	}
	for spec, want := range map[string]int64{SpecLatest: 2, SpecLatestProcessed: 2, SpecLatestAppConsistent: 1, "4": 4} {
		p, err := Pick(pts, spec, "m")
		require.NoError(t, err, spec)
		require.Equal(t, want, p.ID, spec)
	}
	_, err := Pick(pts[2:], SpecLatest, "m")
	require.ErrorIs(t, err, ErrNoPoint)
}

// TestHealthDegradedByDamagedPoints: damaged points make a healthy or
// warning machine degraded, a critical one stays critical, and a machine
// that is not replicating (a warning) is degraded too.
func TestHealthDegradedByDamagedPoints(t *testing.T) {
	now := time.Unix(1e9, 0)
	last := now.Add(-time.Second)
	in := HealthInput{Now: now, LastPoint: &last, Protected: now.Add(-time.Hour), Threshold: time.Minute,
		Connected: true, Replicating: true, DamagedPoints: 2}
	_, level, reason := Health(in)
	require.Equal(t, Degraded, level)
	require.Contains(t, reason, "2 point(s) read data found damaged")
	in.DamageDetail = "point 3 disk d block 9, point 4 disk d block 9"
	_, _, reason = Health(in)
	require.Contains(t, reason, "(point 3 disk d block 9, point 4 disk d block 9)", "the audit's findings name point, disk and block")
	in.DamageDetail = ""
	old := now.Add(-time.Hour)
	in.LastPoint = &old
	_, level, _ = Health(in)
	require.Equal(t, Critical, level)
	in.LastPoint, in.Replicating = &last, false
	_, level, _ = Health(in)
	require.Equal(t, Degraded, level)
	in.DamagedPoints = 0
	_, level, _ = Health(in)
	require.Equal(t, Warning, level, "not replicating is never healthy")
}
