package blockmap

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSum(t *testing.T) {
	require.Equal(t, ZeroHash, Sum(make([]byte, 65536)))
	b := make([]byte, 65536)
	b[65535] = 1
	require.NotEqual(t, ZeroHash, Sum(b))
	require.True(t, IsZero(make([]byte, 13)))
	require.False(t, IsZero([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 1}))
}

func TestPersistAcrossProcessCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.map")
	m, trusted, err := Open(path, 4096, 10*4096+1, "boot-a")
	require.NoError(t, err)
	require.True(t, trusted)
	require.Equal(t, int64(11), m.Len())
	require.NoError(t, m.BeginCycle(7, "boot-a"))
	h := Sum([]byte("block three"))
	require.NoError(t, m.Set(Entry{Block: 3, Hash: h}))
	require.Error(t, m.Set(Entry{Block: 11, Hash: h}))
	require.NoError(t, m.Close()) // no Commit: as if killed mid-cycle

	m, trusted, err = Open(path, 4096, 10*4096+1, "boot-a")
	require.NoError(t, err)
	require.True(t, trusted, "same boot: the page cache kept every entry")
	require.Equal(t, h, m.Get(3))
	require.Equal(t, State{Pending: 7, InCycle: true, BootID: "boot-a"}, m.State())
	require.NoError(t, m.Close())

	m, trusted, err = Open(path, 4096, 10*4096+1, "boot-b")
	require.NoError(t, err)
	require.False(t, trusted, "a reboot mid-cycle may have lost unsynced entries")
	require.NoError(t, m.Commit(9))
	require.NoError(t, m.Close())

	m, trusted, err = Open(path, 4096, 10*4096+1, "boot-c")
	require.NoError(t, err)
	require.True(t, trusted, "a committed map survives reboots")
	require.Equal(t, State{HeadPoint: 9}, m.State())
	require.Equal(t, h, m.Get(3))
	require.NoError(t, m.Close())
}

func TestDamagedOrMismatchedMapIsUntrusted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.map")
	m, _, err := Open(path, 4096, 8*4096, "b")
	require.NoError(t, err)
	require.NoError(t, m.Set(Entry{Block: 1, Hash: Sum([]byte("x"))}))
	require.NoError(t, m.Commit(1))
	require.NoError(t, m.Close())

	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{0xFF}, 20)
	require.NoError(t, err)
	f.Close()
	m, trusted, err := Open(path, 4096, 8*4096, "b")
	require.NoError(t, err)
	require.False(t, trusted)
	require.Equal(t, ZeroHash, m.Get(1), "a damaged map starts from zero")
	require.NoError(t, m.Commit(2))
	require.NoError(t, m.Close())

	m, trusted, err = Open(path, 65536, 8*4096, "b")
	require.NoError(t, err)
	require.False(t, trusted, "another block size cannot be reused")
	require.Equal(t, int64(1), m.Len())
	require.NoError(t, m.Close())
}

func TestResizeAndReset(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.map")
	m, _, err := Open(path, 4096, 4*4096, "b")
	require.NoError(t, err)
	h := Sum([]byte("y"))
	require.NoError(t, m.Set(Entry{Block: 3, Hash: h}))
	require.NoError(t, m.Resize(6*4096))
	require.Equal(t, int64(6), m.Len())
	require.Equal(t, h, m.Get(3))
	require.Equal(t, ZeroHash, m.Get(5))
	require.NoError(t, m.Commit(3))
	require.NoError(t, m.Close())
	m, trusted, err := Open(path, 4096, 2*4096, "b")
	require.NoError(t, err)
	require.True(t, trusted)
	require.Equal(t, int64(2), m.Len())
	require.NoError(t, m.Reset())
	require.Equal(t, State{}, m.State())
	require.NoError(t, m.Close())
}
