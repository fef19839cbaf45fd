package apply

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

func smallDisks() []msg.TargetDisk {
	return []msg.TargetDisk{
		{Name: "sda", Size: 1<<20 + 100, BlockSize: 64 << 10},
		{Name: "sdb", Size: 256 << 10, BlockSize: 4 << 10},
	}
}

func TestCreateDiskSetIsSparseAndAtPointZero(t *testing.T) {
	setDir := filepath.Join(t.TempDir(), "targets", "m1", SetStaged)
	d, err := CreateDiskSet(setDir, smallDisks(), SetOptions{})
	require.NoError(t, err)
	defer d.Close()
	st := d.State()
	require.Zero(t, st.Point)
	require.Zero(t, st.MovingTo)
	require.False(t, st.Written)
	for i, dk := range smallDisks() {
		require.Equal(t, DiskPath(setDir, dk.Name), st.Disks[i].Path)
		fi, err := os.Stat(st.Disks[i].Path)
		require.NoError(t, err)
		require.Equal(t, dk.Size, fi.Size())
		require.Zero(t, allocated(t, st.Disks[i].Path), "a new disk is all hole")
		require.True(t, isHole(t, st.Disks[i].Path, 0, dk.Size))
	}
	onDisk, err := ReadState(setDir)
	require.NoError(t, err)
	require.Equal(t, msg.DiskSetState{Disks: smallDisks()}, onDisk)
	// No temporary directory is left next to the set.
	entries, err := os.ReadDir(filepath.Dir(setDir))
	require.NoError(t, err)
	require.Len(t, entries, 1)

	_, err = CreateDiskSet(setDir, smallDisks(), SetOptions{})
	require.ErrorIs(t, err, ErrExists)
	require.ErrorIs(t, err, protocol.ErrExists)
}

func TestDiskSetWritesZeroesAndFinishes(t *testing.T) {
	setDir := filepath.Join(t.TempDir(), "m", SetStaged)
	d, err := CreateDiskSet(setDir, smallDisks(), SetOptions{})
	require.NoError(t, err)
	defer d.Close()
	im := newImage(smallDisks()...)
	rng := rand.New(rand.NewPCG(1, 1))
	im.fill(rng, 0, 0, im.disks[0].Size, false)
	im.fill(rng, 1, 0, im.disks[1].Size, false)

	require.ErrorIs(t, d.WriteBlock(0, 0, im.block(0, 0)), ErrRefused, "a write outside a move")
	require.NoError(t, d.BeginMove(4, smallDisks()))
	for _, r := range im.all() {
		require.NoError(t, d.WriteBlock(r.disk, r.block, im.block(r.disk, r.block)))
	}
	path := DiskPath(setDir, "sda")
	require.True(t, isData(t, path, 0, 1<<20))

	// Zero blocks 3 and 5 of sda and the last (partial) block: holes.
	for _, b := range []uint64{3, 5, 16} {
		require.NoError(t, d.ZeroBlock(0, b))
		off := int64(b) << 16
		clear(im.data[0][off:min(off+64<<10, im.disks[0].Size)])
	}
	if sparseChecks {
		require.True(t, isHole(t, path, 3<<16, 64<<10), "a zero block is punched out")
		require.True(t, isHole(t, path, 5<<16, 64<<10))
		require.True(t, isData(t, path, 4<<16, 64<<10))
	}
	require.ErrorIs(t, d.Finish(5), ErrRefused, "finish of another move")
	require.NoError(t, d.Finish(4))
	requireContent(t, setDir, im)
	st, err := ReadState(setDir)
	require.NoError(t, err)
	require.Equal(t, msg.DiskSetState{Point: 4, Disks: smallDisks()}, st)
	var want int64 = im.disks[0].Size + im.disks[1].Size + 2*64<<10 + 100
	require.Equal(t, want, d.BytesApplied())
}

func TestZeroBlockWritesZerosWithoutPunch(t *testing.T) {
	setDir := filepath.Join(t.TempDir(), "m", SetStaged)
	d, err := CreateDiskSet(setDir, smallDisks(), SetOptions{})
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.BeginMove(1, smallDisks()))
	block := bytes.Repeat([]byte{0xAB}, 4<<10)
	for b := uint64(0); b < 4; b++ {
		require.NoError(t, d.WriteBlock(1, b, block))
	}
	// As on a filesystem that refused a punch once.
	d.noPunch.Store(true)
	require.NoError(t, d.ZeroBlock(1, 2))
	require.NoError(t, d.Finish(1))
	got := readFile(t, DiskPath(setDir, "sdb"))
	require.Equal(t, block, got[1<<12:2<<12])
	require.Equal(t, make([]byte, 4<<10), got[2<<12:3<<12])
	require.Equal(t, block, got[3<<12:4<<12])
	if sparseChecks {
		require.True(t, isData(t, DiskPath(setDir, "sdb"), 2<<12, 4<<10), "zeros were written, not punched")
	}
}

func TestWriteBlockChecksItsAddress(t *testing.T) {
	d, err := CreateDiskSet(filepath.Join(t.TempDir(), "m", SetStaged), smallDisks(), SetOptions{})
	require.NoError(t, err)
	defer d.Close()
	require.NoError(t, d.BeginMove(1, smallDisks()))
	full := make([]byte, 64<<10)
	require.ErrorIs(t, d.WriteBlock(2, 0, full), ErrInvalid, "no disk 2")
	require.ErrorIs(t, d.WriteBlock(-1, 0, full), ErrInvalid)
	require.ErrorIs(t, d.WriteBlock(0, 17, full), ErrInvalid, "past the last block")
	require.ErrorIs(t, d.WriteBlock(0, 1<<62, full), ErrInvalid, "an offset that overflows")
	require.ErrorIs(t, d.WriteBlock(0, 0, full[:100]), ErrInvalid, "a short block")
	require.NoError(t, d.WriteBlock(0, 16, full), "the last block, padded")
	require.NoError(t, d.WriteBlock(0, 16, full[:100]), "the last block, cut to the disk")
	require.ErrorIs(t, d.WriteBlock(0, 16, full[:99]), ErrInvalid)
	require.NoError(t, d.Close())
	require.ErrorIs(t, d.WriteBlock(0, 0, full), ErrClosed)
}

func TestInterruptedMoveIsKnownAndResumable(t *testing.T) {
	setDir := filepath.Join(t.TempDir(), "m", SetStaged)
	d, err := CreateDiskSet(setDir, smallDisks(), SetOptions{})
	require.NoError(t, err)
	im := newImage(smallDisks()...)
	rng := rand.New(rand.NewPCG(2, 2))
	im.fill(rng, 0, 0, im.disks[0].Size, true)
	require.NoError(t, d.BeginMove(7, smallDisks()))
	for b := uint64(0); b < 8; b++ {
		require.NoError(t, d.WriteBlock(0, b, im.block(0, b)))
	}
	// The process dies here: no Finish.
	require.NoError(t, d.Close())

	d, err = OpenDiskSet(setDir, SetOptions{})
	require.NoError(t, err)
	defer d.Close()
	st := d.State()
	require.Zero(t, st.Point)
	require.Equal(t, int64(7), st.MovingTo, "the interrupted move is recorded")
	require.NoError(t, d.BeginMove(7, smallDisks()))
	for _, r := range im.all() {
		require.NoError(t, d.WriteBlock(r.disk, r.block, im.block(r.disk, r.block)))
	}
	require.NoError(t, d.Finish(7))
	requireContent(t, setDir, im)
}

func TestOpenDiskSetChecksFiles(t *testing.T) {
	setDir := filepath.Join(t.TempDir(), "m", SetStaged)
	d, err := CreateDiskSet(setDir, smallDisks(), SetOptions{})
	require.NoError(t, err)
	require.NoError(t, d.Close())

	// A set at a point with a disk file missing is corrupt.
	require.NoError(t, os.Remove(DiskPath(setDir, "sdb")))
	_, err = OpenDiskSet(setDir, SetOptions{})
	require.ErrorIs(t, err, ErrCorrupt)

	// A set between points may miss the files its move adds (a crash
	// after the state was written): they are created.
	require.NoError(t, writeState(setDir, msg.DiskSetState{MovingTo: 3, Disks: smallDisks()}))
	d, err = OpenDiskSet(setDir, SetOptions{})
	require.NoError(t, err)
	require.NoError(t, d.Close())
	require.FileExists(t, DiskPath(setDir, "sdb"))

	// A state file that is not JSON, or breaks the rules, is corrupt.
	require.NoError(t, os.WriteFile(filepath.Join(setDir, StateFile), []byte("{not json"), 0o600))
	_, err = OpenDiskSet(setDir, SetOptions{})
	require.ErrorIs(t, err, ErrCorrupt)
	require.NoError(t, os.WriteFile(filepath.Join(setDir, StateFile), []byte(`{"point":1,"disks":[{"name":"../x","size":1,"block_size":1}]}`), 0o600))
	_, err = OpenDiskSet(setDir, SetOptions{})
	require.ErrorIs(t, err, ErrCorrupt)

	_, err = OpenDiskSet(filepath.Join(t.TempDir(), "nothing"), SetOptions{})
	require.ErrorIs(t, err, ErrNotFound)
}

func TestSetWrittenIsDurable(t *testing.T) {
	setDir := filepath.Join(t.TempDir(), "m", SetLive)
	d, err := CreateDiskSet(setDir, smallDisks(), SetOptions{})
	require.NoError(t, err)
	require.NoError(t, d.SetWritten())
	require.NoError(t, d.Close())
	st, err := ReadState(setDir)
	require.NoError(t, err)
	require.True(t, st.Written)
}

func TestNames(t *testing.T) {
	for _, ok := range []string{"a", "web-01", "db_2.prod", "A9", string(bytes.Repeat([]byte("x"), MaxNameLen))} {
		require.True(t, ValidName(ok), ok)
	}
	for _, bad := range []string{"", ".", "..", ".hidden", "a/b", "a\\b", "a b", "é", "a\x00", string(bytes.Repeat([]byte("x"), MaxNameLen+1))} {
		require.False(t, ValidName(bad), "%q", bad)
	}
	for _, ok := range []string{SetStaged, SetLive, "test-1", "test-job.7"} {
		require.True(t, ValidSetName(ok), ok)
	}
	for _, bad := range []string{"", "test-", "test-..", "test-a/b", "other", "Staged", "../staged"} {
		require.False(t, ValidSetName(bad), "%q", bad)
	}
	_, err := SetDir("relative/dir", "m", SetStaged)
	require.ErrorIs(t, err, protocol.ErrInvalid)
	p, err := SetDir("/srv/targets/../t", "m", SetStaged)
	require.NoError(t, err)
	require.Equal(t, "/srv/t/m/staged", filepath.ToSlash(p))
}
