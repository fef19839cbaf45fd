package e2e

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPointsExportIsPrivate: `points export` writes decrypted disks: the
// directory it creates is 0700 and each disk file 0600, whatever the
// umask, so no other local user can read a machine's data.
func TestPointsExportIsPrivate(t *testing.T) {
	old := syscall.Umask(0o022) // the common umask, which gave 0755/0644 before
	t.Cleanup(func() { syscall.Umask(old) })

	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "src")
	img := filepath.Join(t.TempDir(), "d.img")
	want := makeImage(t, img, 3, 4<<20)
	c.MustFerry("protect", "m", "--agent", "src", "--disk", "d="+img)
	p := c.WaitPoint("m", 0, time.Minute)

	out := filepath.Join(t.TempDir(), "export", "here")
	c.MustFerry("points", "export", "m", "--point", "latest", "--out", out)
	fi, err := os.Stat(out)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), "the export directory it created")
	fi, err = os.Stat(filepath.Join(out, "d.raw"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the exported disk")
	got, err := os.ReadFile(filepath.Join(out, "d.raw"))
	require.NoError(t, err)
	require.Equal(t, want, got, "point %d is the image", p.ID)

	// An existing file is replaced by a private one; a directory the user
	// made keeps its own mode.
	mine := filepath.Join(t.TempDir(), "mine")
	require.NoError(t, os.Mkdir(mine, 0o750))
	require.NoError(t, os.WriteFile(filepath.Join(mine, "d.raw"), []byte("old"), 0o644))
	c.MustFerry("points", "export", "m", "--out", mine)
	fi, err = os.Stat(filepath.Join(mine, "d.raw"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "a replaced disk file")
	fi, err = os.Stat(mine)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o750), fi.Mode().Perm())
}
