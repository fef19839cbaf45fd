package catalog

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
)

// TestDrillsAndVerifiedPoints: drills round-trip (a second create is
// ErrExists), runs are listed newest first, only passed runs verify their
// point, runs a restart interrupted are marked failed, and deleting a
// drill deletes its runs (and what they verified).
func TestDrillsAndVerifiedPoints(t *testing.T) {
	ctx := context.Background()
	c, err := Open(ctx, filepath.Join(t.TempDir(), "catalog.db"), time.Now)
	require.NoError(t, err)
	defer c.Close()
	d := api.Drill{Name: "boot", Machine: "vm", Every: api.Duration(24 * time.Hour), Probe: "true", Timeout: api.Duration(time.Minute)}
	require.NoError(t, c.PutDrill(ctx, d, true))
	require.ErrorIs(t, c.PutDrill(ctx, d, true), ErrExists)
	got, err := c.Drill(ctx, "boot")
	require.NoError(t, err)
	require.Equal(t, d, got)
	_, err = c.Drill(ctx, "nope")
	require.ErrorIs(t, err, ErrNotFound)

	t0 := time.Unix(1000, 0).UTC()
	for i, res := range []string{api.DrillPassed, api.DrillFailed, api.DrillCancelled, api.DrillRunning} {
		id, err := c.PutDrillRun(ctx, api.DrillRun{Drill: "boot", Machine: "vm", Point: int64(10 + i), Started: t0.Add(time.Duration(i) * time.Minute), Result: res})
		require.NoError(t, err)
		require.Equal(t, int64(i+1), id)
	}
	v, err := c.VerifiedPoints(ctx, "vm")
	require.NoError(t, err)
	require.Equal(t, map[int64]bool{10: true}, v, "only a passed run verifies its point")
	runs, err := c.DrillRuns(ctx, "boot", 2)
	require.NoError(t, err)
	require.Len(t, runs, 2)
	require.Equal(t, int64(4), runs[0].ID, "newest first")
	require.Equal(t, api.DrillRunning, runs[0].Result)

	require.NoError(t, c.AbandonDrillRuns(ctx))
	runs, err = c.MachineDrillRuns(ctx, "vm", 1)
	require.NoError(t, err)
	require.Equal(t, api.DrillFailed, runs[0].Result, "a run the controller's stop interrupted failed")
	require.Contains(t, runs[0].Error, "controller stopped")

	require.NoError(t, c.DeleteDrill(ctx, "boot"))
	require.ErrorIs(t, c.DeleteDrill(ctx, "boot"), ErrNotFound)
	v, err = c.VerifiedPoints(ctx, "vm")
	require.NoError(t, err)
	require.Equal(t, map[int64]bool{10: true}, v)
	runs, err = c.MachineDrillRuns(ctx, "vm", 0)
	require.NoError(t, err)
	require.Len(t, runs, 1, "only the passed run is kept")
}
