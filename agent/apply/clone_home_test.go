package apply

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/protocol/msg"
)

// adoptedHome adopts a random 4 MiB home disk (its second MiB zeros) at dir/vm.img and moves the
// set to point 5 with no block changed: the home set holds a point.
func adoptedHome(t *testing.T, s *Site, dir string) (msg.TargetRef, []byte) {
	t.Helper()
	ctx := context.Background()
	content := make([]byte, 4<<20)
	rng := rand.New(rand.NewPCG(3, 5))
	for i := range content {
		content[i] = byte(rng.Uint32())
	}
	copy(content[1<<20:], make([]byte, 1<<20)) // a zero chunk: the copy skips it
	home := filepath.Join(dir, "vm.img")
	require.NoError(t, os.WriteFile(home, content, 0o600))
	d := msg.TargetDisk{Name: "d", Size: 4 << 20, BlockSize: 64 << 10}
	ref := msg.TargetRef{Dir: filepath.Join(dir, ".ferry-home"), Machine: "m", Set: SetHome}
	_, err := s.Adopt(ctx, ref, []msg.TargetDisk{d}, []string{home})
	require.NoError(t, err)
	setDir, _ := SetDir(ref.Dir, ref.Machine, ref.Set)
	require.NoError(t, s.Close(), "the site holds the adopted disks; this test moves them itself")
	set, err := OpenDiskSet(setDir, SetOptions{})
	require.NoError(t, err)
	require.NoError(t, set.BeginMove(5, []msg.TargetDisk{d}))
	require.NoError(t, set.Finish(5))
	require.NoError(t, set.Close())
	return ref, content
}

// TestCloneHomeCopiesAcrossFilesystems: with the test directory on
// another filesystem than the home disks (no reflink across them) the
// clone is a sparse copy, says so, equals the home disk, keeps its
// extension and holds the home set's point; the home disk is untouched; a
// second clone to the same set is refused as existing, and Remove deletes
// the clone with its set.
func TestCloneHomeCopiesAcrossFilesystems(t *testing.T) {
	ctx := context.Background()
	s := newTestSite(t)
	homeDir := testenv.MountLoop(t, "xfs", 512<<20)
	testDir := t.TempDir() // another filesystem than the loop mount
	ref, content := adoptedHome(t, s, homeDir)

	resp, err := s.CloneHome(ctx, ref, testDir, "test-j1")
	require.NoError(t, err)
	require.False(t, resp.Reflinked, "no reflink across filesystems")
	require.Equal(t, int64(len(content)-1<<20), resp.Bytes, "the zero range was not written")
	want := filepath.Join(testDir, "m", "test-j1", "d.img")
	require.Equal(t, []string{want}, resp.Paths, "the clone keeps the home disk's extension")
	got, err := os.ReadFile(want)
	require.NoError(t, err)
	require.True(t, bytes.Equal(content, got), "the clone equals the home disk")
	home, err := os.ReadFile(filepath.Join(homeDir, "vm.img"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(content, home), "the home disk is only read")

	sts, err := s.Status(ctx, testDir, "m")
	require.NoError(t, err)
	require.Equal(t, int64(5), sts["test-j1"].Point, "the clone holds the home set's point")
	require.False(t, sts["test-j1"].Written)
	require.Equal(t, want, sts["test-j1"].Disks[0].Path)

	_, err = s.CloneHome(ctx, ref, testDir, "test-j1")
	require.ErrorIs(t, err, ErrExists)
	require.NoError(t, s.Remove(ctx, msg.TargetRef{Dir: testDir, Machine: "m", Set: "test-j1"}))
	_, err = os.Stat(want)
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = os.Stat(filepath.Join(homeDir, "vm.img"))
	require.NoError(t, err, "removing the clone leaves the home disk")
}

// TestCloneHomeRefusesAHomeSetWithoutAPoint: a home set adopted but never
// moved (its content unknown) or written is refused, nothing created.
func TestCloneHomeRefusesAHomeSetWithoutAPoint(t *testing.T) {
	ctx := context.Background()
	s := newTestSite(t)
	dir := t.TempDir()
	home := filepath.Join(dir, "vm.img")
	require.NoError(t, os.WriteFile(home, make([]byte, 1<<20), 0o600))
	ref := msg.TargetRef{Dir: filepath.Join(dir, ".ferry-home"), Machine: "m", Set: SetHome}
	_, err := s.Adopt(ctx, ref, []msg.TargetDisk{{Name: "d", Size: 1 << 20, BlockSize: 64 << 10}}, []string{home})
	require.NoError(t, err)
	testDir := t.TempDir()
	_, err = s.CloneHome(ctx, ref, testDir, "test-j1")
	require.ErrorIs(t, err, ErrRefused)
	_, err = os.Stat(filepath.Join(testDir, "m", "test-j1"))
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = s.CloneHome(ctx, msg.TargetRef{Dir: ref.Dir, Machine: "m", Set: SetStaged}, testDir, "test-j1")
	require.ErrorIs(t, err, ErrInvalid, "only the home set is cloned this way")
}
