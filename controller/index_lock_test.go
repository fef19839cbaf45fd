package controller_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// The controller is its repository index's only user and opens it in
// exclusive locking mode: SQLite keeps the WAL index in memory, so there
// is no index.db-shm and no fcntl lock around every statement. A restart
// on the same data directory (TestRestartOnTheSameDataDirInOneProcess)
// shows the lock is released when Run returns.
func TestControllerHoldsItsIndexExclusively(t *testing.T) {
	dir := t.TempDir()
	data, sock := filepath.Join(dir, "data"), filepath.Join(dir, "admin.sock")
	require.NoError(t, os.MkdirAll(data, 0o700))
	_, stop := startController(t, data, sock)
	repo := filepath.Join(data, "repository")
	_, err := os.Stat(filepath.Join(repo, "index.db"))
	require.NoError(t, err, "precondition: the controller made its repository")
	_, err = os.Stat(filepath.Join(repo, "index.db-shm"))
	require.ErrorIs(t, err, os.ErrNotExist, "a shared-memory WAL index: the index is not held exclusively")
	require.NoError(t, stop())
}
