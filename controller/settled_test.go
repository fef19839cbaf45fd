package controller

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/controller/lifecycle"
	"github.com/ferrydr/ferry/storage"
)

// TestAPointCommittedBeforeTheCatalogHeardOfItCounts: ingest commits a
// point in the repository and only then moves the machine to protected in
// the catalog; an export, a failover or `machines show` in between (or
// after a controller crash in between) must see the point, not refuse with
// "the initial sync has made no recovery point yet" (CI caught an export in
// that window). The repository is the truth; the catalog catches up.
func TestAPointCommittedBeforeTheCatalogHeardOfItCounts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cat, err := catalog.Open(ctx, filepath.Join(dir, "catalog.db"), time.Now)
	require.NoError(t, err)
	defer cat.Close()
	require.NoError(t, storage.Create(ctx, filepath.Join(dir, "repo"), storage.CreateOptions{PackSize: storage.MinPackSize}))
	repo, err := storage.Open(ctx, filepath.Join(dir, "repo"), storage.OpenOptions{})
	require.NoError(t, err)
	defer repo.Close()
	s := &Server{cat: cat, repo: repo, log: slog.New(slog.DiscardHandler)}

	require.NoError(t, cat.AddMachine(ctx, catalog.Machine{Name: "m", Policy: "default", State: catalog.StateSyncing,
		ActiveSite: "source", Direction: "forward"}))
	m, err := s.machine(ctx, "m")
	require.NoError(t, err)
	require.Equal(t, catalog.StateSyncing, m.State, "no point yet: still syncing")

	// The first point lands in the repository; the catalog is not told.
	const bs = 4096
	p, err := repo.BeginPoint(ctx, "m", []storage.DiskSpec{{Name: "d", Size: bs, BlockSize: bs}})
	require.NoError(t, err)
	_, err = p.Commit(ctx, storage.CommitInfo{Consistency: storage.CrashConsistent})
	require.NoError(t, err)

	require.NoError(t, s.requireState(ctx, "m", lifecycle.Export), "the committed point can be exported")
	m, err = cat.Machine(ctx, "m")
	require.NoError(t, err)
	require.Equal(t, catalog.StateProtected, m.State, "the catalog caught up with the repository")
}
