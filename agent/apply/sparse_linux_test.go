//go:build linux

package apply

import (
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// allocated is the bytes the filesystem allocated to a file (st_blocks).
func allocated(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// isHole reports whether [off, off+n) of path is wholly a hole, asked with
// SEEK_DATA directly (independent of the package's own extent walk).
func isHole(t testing.TB, path string, off, n int64) bool {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return true
	}
	require.NoError(t, err)
	return d >= off+n
}

// isData reports whether [off, off+n) of path is wholly data.
func isData(t testing.TB, path string, off, n int64) bool {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if err != nil || d != off {
		return false
	}
	h, err := unix.Seek(int(f.Fd()), off, unix.SEEK_HOLE)
	require.NoError(t, err)
	return h >= off+n
}

const sparseChecks = true
