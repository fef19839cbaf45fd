package points

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/storage"
)

func TestPick(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	pts := []storage.Point{
		{ID: 3, Instant: t0, Consistency: storage.CrashConsistent},
		{ID: 5, Instant: t0.Add(time.Minute), Consistency: storage.AppConsistent},
		{ID: 9, Instant: t0.Add(2 * time.Minute), Consistency: storage.CrashConsistent},
	}
	for spec, want := range map[string]int64{
		"": 9, "latest": 9, "latest-processed": 9, "latest-app-consistent": 5, "3": 3,
		t0.Add(90 * time.Second).Format(time.RFC3339): 5, t0.Format(time.RFC3339): 3,
	} {
		p, err := Pick(pts, spec, "m")
		require.NoError(t, err, spec)
		require.Equal(t, want, p.ID, spec)
	}
	_, err := Pick(pts, "4", "m")
	require.ErrorIs(t, err, ErrNoPoint)
	_, err = Pick(pts, t0.Add(-time.Second).Format(time.RFC3339), "m")
	require.ErrorIs(t, err, ErrNoPoint)
	_, err = Pick(pts, "yesterday", "m")
	require.ErrorIs(t, err, ErrBadSpec)
	_, err = Pick(nil, "latest", "m")
	require.ErrorIs(t, err, ErrNoPoint)
	_, err = Pick(pts[:1], "latest-app-consistent", "m")
	require.ErrorIs(t, err, ErrNoPoint)
}

func TestHealth(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { x := now.Add(-d); return &x }
	base := HealthInput{Now: now, Protected: now.Add(-time.Hour), Threshold: 5 * time.Minute, Connected: true, Replicating: true}

	in := base
	in.LastPoint = at(10 * time.Second)
	rpo, level, reason := Health(in)
	require.Equal(t, Healthy, level, reason)
	require.InDelta(t, 10, *rpo, 0.001)

	in.LastPoint = at(5 * time.Minute)
	_, level, reason = Health(in)
	require.Equal(t, Healthy, level, "at the threshold is not past it: %s", reason)

	in.LastPoint = at(5*time.Minute + time.Second)
	_, level, reason = Health(in)
	require.Equal(t, Critical, level, "past the threshold the RPO promise is broken")
	require.Contains(t, reason, "RPO 5m1s exceeds the threshold 5m0s")

	in.LastPoint = at(11 * time.Minute)
	_, level, _ = Health(in)
	require.Equal(t, Critical, level)

	in = base
	in.Protected = now.Add(-time.Minute)
	rpo, level, _ = Health(in)
	require.Nil(t, rpo)
	require.Equal(t, Healthy, level, "a young initial sync is healthy")
	in.Protected = now.Add(-6 * time.Minute)
	_, level, reason = Health(in)
	require.Equal(t, Critical, level)
	require.Contains(t, reason, "initial sync")

	in = base
	in.LastPoint = at(time.Second)
	in.Connected = false
	in.ClockSkew = 3 * time.Second
	_, level, reason = Health(in)
	require.Equal(t, Warning, level)
	require.Contains(t, reason, "not connected")
	require.Contains(t, reason, "clock")

	// A failed-over machine is not healthy: nothing replicates it.
	in = base
	in.LastPoint = at(time.Second)
	in.Replicating, in.NotReplicating = false, "failed-over: it runs at its recovery site"
	_, level, reason = Health(in)
	require.Equal(t, Warning, level)
	require.Equal(t, "not replicating: failed-over: it runs at its recovery site; newest point 1s old", reason)
}
