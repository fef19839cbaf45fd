package storage

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestIndexPragmas: the index runs in WAL mode with synchronous=FULL and
// mmap off; with ExclusiveLock it takes the exclusive lock and never makes
// the -shm file (so a FUSE filesystem without mmap can hold it).
func TestIndexPragmas(t *testing.T) {
	ctx := context.Background()
	for _, excl := range []bool{false, true} {
		dir := t.TempDir()
		require.NoError(t, Create(ctx, dir, CreateOptions{}))
		r, err := Open(ctx, dir, OpenOptions{ExclusiveLock: excl})
		require.NoError(t, err)
		p, err := r.BeginPoint(ctx, "m", []DiskSpec{{Name: "d", Size: tbs, BlockSize: tbs}})
		require.NoError(t, err)
		require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("d", 0, content(1, tbs))}))
		var mode, locking string
		var sync, mmap int
		require.NoError(t, r.c.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
		require.NoError(t, r.c.db.QueryRow(`PRAGMA synchronous`).Scan(&sync))
		require.NoError(t, r.c.db.QueryRow(`PRAGMA mmap_size`).Scan(&mmap))
		require.NoError(t, r.c.db.QueryRow(`PRAGMA locking_mode`).Scan(&locking))
		require.Equal(t, "wal", mode)
		require.Equal(t, 2, sync) // FULL
		require.Equal(t, 0, mmap)
		_, shmErr := os.Stat(filepath.Join(dir, indexName+"-shm"))
		if excl {
			require.Equal(t, "exclusive", locking)
			require.True(t, os.IsNotExist(shmErr), "exclusive mode must not create -shm: %v", shmErr)
		} else {
			require.Equal(t, "normal", locking)
			require.NoError(t, shmErr, "normal WAL mode uses -shm (the test would not notice otherwise)")
		}
		require.NoError(t, r.Close())
	}
}
