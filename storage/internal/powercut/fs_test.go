package powercut

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func requireCapability(t *testing.T, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("FERRY_CI") == "1" {
		t.Fatalf("required capability missing under FERRY_CI=1: %s", why)
	}
	t.Skip("skipping: " + why)
}

func syncDir(t *testing.T, dir string) {
	d, err := os.Open(dir)
	require.NoError(t, err)
	require.NoError(t, d.Sync())
	require.NoError(t, d.Close())
}

// TestCutKeepsOnlySyncedState checks the model itself: synced data and
// entries survive a cut, everything else is dropped.
func TestCutKeepsOnlySyncedState(t *testing.T) {
	ok, why := Available()
	requireCapability(t, ok, why)
	mnt := t.TempDir()
	m, err := New(mnt)
	require.NoError(t, err)

	// a: created, written, fsynced, entry synced, then more unsynced data.
	f, err := os.Create(filepath.Join(mnt, "a"))
	require.NoError(t, err)
	_, err = f.Write([]byte("durable"))
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	syncDir(t, mnt)
	_, err = f.Write([]byte(" lost"))
	require.NoError(t, err)
	require.NoError(t, f.Close())
	// c: renamed over after a synced entry; rename not synced.
	require.NoError(t, os.MkdirAll(filepath.Join(mnt, "d"), 0o700))
	syncDir(t, mnt)
	require.NoError(t, os.WriteFile(filepath.Join(mnt, "d", "c"), []byte("old"), 0o600))
	fc, _ := os.OpenFile(filepath.Join(mnt, "d", "c"), os.O_RDWR, 0)
	require.NoError(t, fc.Sync())
	fc.Close()
	syncDir(t, filepath.Join(mnt, "d"))
	require.NoError(t, os.Rename(filepath.Join(mnt, "d", "c"), filepath.Join(mnt, "d", "c2")))
	// b: fsynced but its entry never synced.
	require.NoError(t, os.WriteFile(filepath.Join(mnt, "b"), []byte("x"), 0o600))
	fb, err := os.OpenFile(filepath.Join(mnt, "b"), os.O_RDWR, 0)
	require.NoError(t, err)
	require.NoError(t, fb.Sync())
	fb.Close()

	im := m.Cut()
	_, err = os.ReadFile(filepath.Join(mnt, "a"))
	require.Error(t, err, "a cut filesystem must fail every operation")
	require.NoError(t, m.Unmount())

	m2, err := MountImage(mnt, im)
	require.NoError(t, err)
	defer m2.Unmount()
	got, err := os.ReadFile(filepath.Join(mnt, "a"))
	require.NoError(t, err)
	require.Equal(t, "durable", string(got))
	_, err = os.Stat(filepath.Join(mnt, "b"))
	require.True(t, os.IsNotExist(err), "unsynced entry must be gone: %v", err)
	got, err = os.ReadFile(filepath.Join(mnt, "d", "c"))
	require.NoError(t, err)
	require.Equal(t, "old", string(got))
	_, err = os.Stat(filepath.Join(mnt, "d", "c2"))
	require.True(t, os.IsNotExist(err))
}
