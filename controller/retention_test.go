package controller

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/storage"
)

// TestRetentionSparesWhatAReprotectNeeds: a machine waiting for its
// administrator keeps its points however long it waits: failed over or
// failed back (change-point may still move it to any of them), committed
// or back home (a re-protect moves the other site's disks from the points
// commit kept, by changed blocks). No new point arrives in these states,
// so its policy's retention would otherwise prune them; a protected
// machine's old points are pruned as usual.
func TestRetentionSparesWhatAReprotectNeeds(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cat, err := catalog.Open(ctx, filepath.Join(dir, "catalog.db"), time.Now)
	require.NoError(t, err)
	defer cat.Close()
	require.NoError(t, cat.EnsureDefaultPolicy(ctx))
	require.NoError(t, storage.Create(ctx, filepath.Join(dir, "repo"), storage.CreateOptions{PackSize: storage.MinPackSize}))
	repo, err := storage.Open(ctx, filepath.Join(dir, "repo"), storage.OpenOptions{})
	require.NoError(t, err)
	defer repo.Close()
	// A year later: every point is far past the default retention.
	later := time.Now().Add(365 * 24 * time.Hour)
	s := &Server{cat: cat, repo: repo, log: slog.New(slog.DiscardHandler), now: func() time.Time { return later }}

	cases := []struct {
		state string
		kept  int
	}{
		{catalog.StateFailedOver, 2},
		{catalog.StateCommitted, 2},
		{catalog.StateBackHome, 2},
		{catalog.StateFailedBack, 2},
		{catalog.StateProtected, 1}, // the newest point is always kept
	}
	for _, c := range cases {
		t.Run(c.state, func(t *testing.T) {
			name := "m-" + c.state
			require.NoError(t, cat.AddMachine(ctx, catalog.Machine{Name: name, Policy: catalog.DefaultPolicyName, State: c.state,
				ActiveSite: catalog.SiteHome, Direction: catalog.Forward}))
			for range 2 {
				p, err := repo.BeginPoint(ctx, name, []storage.DiskSpec{{Name: "d", Size: 4096, BlockSize: 4096}})
				require.NoError(t, err)
				_, err = p.Commit(ctx, storage.CommitInfo{Consistency: storage.CrashConsistent})
				require.NoError(t, err)
			}
			m, err := cat.Machine(ctx, name)
			require.NoError(t, err)
			s.applyRetention(ctx, m)
			pts, err := repo.Points(ctx, name)
			require.NoError(t, err)
			require.Len(t, pts, c.kept)
		})
	}
}

// TestRetentionKeepsTheNewestVerifiedPoint: past the retention window a
// protected machine keeps its newest point and the newest point a drill
// verified (an older verified one goes); a failed drill's point is not kept.
func TestRetentionKeepsTheNewestVerifiedPoint(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cat, err := catalog.Open(ctx, filepath.Join(dir, "catalog.db"), time.Now)
	require.NoError(t, err)
	defer cat.Close()
	require.NoError(t, cat.EnsureDefaultPolicy(ctx))
	require.NoError(t, storage.Create(ctx, filepath.Join(dir, "repo"), storage.CreateOptions{PackSize: storage.MinPackSize}))
	repo, err := storage.Open(ctx, filepath.Join(dir, "repo"), storage.OpenOptions{})
	require.NoError(t, err)
	defer repo.Close()
	later := time.Now().Add(365 * 24 * time.Hour)
	s := &Server{cat: cat, repo: repo, log: slog.New(slog.DiscardHandler), now: func() time.Time { return later }}
	require.NoError(t, cat.AddMachine(ctx, catalog.Machine{Name: "m", Policy: catalog.DefaultPolicyName, State: catalog.StateProtected,
		ActiveSite: catalog.SiteHome, Direction: catalog.Forward}))
	var ids []int64
	for range 5 {
		p, err := repo.BeginPoint(ctx, "m", []storage.DiskSpec{{Name: "d", Size: 4096, BlockSize: 4096}})
		require.NoError(t, err)
		pt, err := p.Commit(ctx, storage.CommitInfo{Consistency: storage.CrashConsistent})
		require.NoError(t, err)
		ids = append(ids, pt.ID)
	}
	for point, result := range map[int64]string{ids[0]: api.DrillPassed, ids[1]: api.DrillPassed, ids[2]: api.DrillFailed} {
		_, err := cat.PutDrillRun(ctx, api.DrillRun{Drill: "boot", Machine: "m", Point: point, Started: time.Now(), Result: result})
		require.NoError(t, err)
	}
	m, err := cat.Machine(ctx, "m")
	require.NoError(t, err)
	s.applyRetention(ctx, m)
	pts, err := repo.Points(ctx, "m")
	require.NoError(t, err)
	var kept []int64
	for _, p := range pts {
		kept = append(kept, p.ID)
	}
	require.Equal(t, []int64{ids[1], ids[4]}, kept, "the newest verified point and the newest point")
}
