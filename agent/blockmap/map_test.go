package blockmap

import (
	"encoding/binary"
	"hash/crc32"
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

// TestSizeChanges: a shrink forgets the cut-off entries once the cycle
// begins; a grow after a committed map reads zeros (the controller's
// newest point was no larger); a grow after a begun, uncommitted cycle
// reads Unknown (the controller may still hold the larger disk); the
// blocks at the old and the new end are rechecked; nothing is written
// before BeginCycle.
func TestSizeChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.map")
	m, trusted, err := Open(path, 4096, 8*4096, "b")
	require.NoError(t, err)
	require.True(t, trusted)
	var es []Entry
	for b := int64(0); b < 8; b++ {
		es = append(es, Entry{Block: b, Hash: Sum([]byte{byte(b + 1)})})
	}
	require.NoError(t, m.BeginCycle(1, "b"))
	require.NoError(t, m.Set(es...))
	require.NoError(t, m.Commit(1))
	require.NoError(t, m.Close())

	// Shrink to 4 blocks, but the cycle never begins: the file is untouched.
	m, trusted, err = Open(path, 4096, 4*4096, "b")
	require.NoError(t, err)
	require.True(t, trusted)
	require.Equal(t, int64(4), m.Len())
	require.Equal(t, []int64{3}, m.Recheck(), "the block at the new end")
	require.Equal(t, Unknown, m.Get(3))
	require.NoError(t, m.Close())
	m, _, err = Open(path, 4096, 8*4096, "b")
	require.NoError(t, err)
	require.Empty(t, m.Recheck(), "the same size as the file: no change")
	require.Equal(t, es[6].Hash, m.Get(6), "a shrink that never reached the controller is forgotten")
	require.NoError(t, m.Close())

	// Shrink to 4 blocks + 100 bytes, committed.
	m, _, err = Open(path, 4096, 4*4096+100, "b")
	require.NoError(t, err)
	require.Equal(t, int64(5), m.Len())
	require.Equal(t, []int64{4}, m.Recheck(), "the block at the new end")
	require.NoError(t, m.BeginCycle(2, "b"))
	require.NoError(t, m.Set(Entry{Block: 4, Hash: Sum([]byte("tail"))}))
	require.NoError(t, m.Commit(2))
	require.NoError(t, m.Close())
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, int64(headerSize+5*entrySize), st.Size(), "the cut-off entries are gone from the file")

	// Grow to 8 blocks after the commit: zeros beyond, the old end
	// rechecked (the new end is beyond the controller's disk: zero there).
	m, _, err = Open(path, 4096, 8*4096, "b")
	require.NoError(t, err)
	require.Equal(t, []int64{4}, m.Recheck())
	require.Equal(t, Unknown, m.Get(4))
	require.Equal(t, ZeroHash, m.Get(5))
	require.Equal(t, ZeroHash, m.Get(6))
	require.Equal(t, es[3].Hash, m.Get(3))
	// Begun, not committed (the process dies): the header now says 8 blocks.
	require.NoError(t, m.BeginCycle(3, "b"))
	require.NoError(t, m.Close())

	// Shrink again to 4 blocks mid-cycle, begin, die; then grow to 8: the
	// controller may have kept 8 blocks, so the regrown blocks are Unknown.
	m, _, err = Open(path, 4096, 4*4096, "b")
	require.NoError(t, err)
	require.NoError(t, m.BeginCycle(3, "b"))
	require.NoError(t, m.Close())
	m, trusted, err = Open(path, 4096, 8*4096, "b")
	require.NoError(t, err)
	require.True(t, trusted)
	require.Equal(t, []int64{3, 4, 5, 6, 7}, m.Recheck())
	for b := int64(4); b < 8; b++ {
		require.Equal(t, Unknown, m.Get(b), "block %d", b)
	}
	require.NoError(t, m.BeginCycle(3, "b"))
	require.NoError(t, m.Close())
	m, _, err = Open(path, 4096, 8*4096, "b")
	require.NoError(t, err)
	require.Equal(t, Unknown, m.Get(6), "Unknown entries are durable once the cycle begins")
	require.NoError(t, m.Reset())
	require.Equal(t, State{}, m.State())
	require.Empty(t, m.Recheck())
	require.Equal(t, ZeroHash, m.Get(6))
	require.NoError(t, m.Close())
}

// TestVersion1MapIsRead: a map written before the size field (version 1)
// is trusted, its size taken as whole blocks.
func TestVersion1MapIsRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.map")
	m, _, err := Open(path, 4096, 3*4096, "b")
	require.NoError(t, err)
	h := Sum([]byte("v1"))
	require.NoError(t, m.BeginCycle(4, "b"))
	require.NoError(t, m.Set(Entry{Block: 1, Hash: h}))
	require.NoError(t, m.Commit(4))
	require.NoError(t, m.Close())
	// Rewrite the header as version 1 wrote it.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	var hdr [headerBytes + 4]byte
	_, err = f.ReadAt(hdr[:], 0)
	require.NoError(t, err)
	binary.LittleEndian.PutUint16(hdr[8:], 1)
	clear(hdr[headerBytesV1:])
	binary.LittleEndian.PutUint32(hdr[headerBytesV1:], crc32.ChecksumIEEE(hdr[:headerBytesV1]))
	_, err = f.WriteAt(hdr[:], 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	m, trusted, err := Open(path, 4096, 3*4096, "b")
	require.NoError(t, err)
	require.True(t, trusted)
	require.Equal(t, State{HeadPoint: 4}, m.State())
	require.Equal(t, h, m.Get(1))
	require.Empty(t, m.Recheck())
	require.NoError(t, m.Close())
}
