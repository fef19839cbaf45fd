package snapshot

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// writeAt writes data to path at off and fsyncs, as a guest's disk write.
func writeAt(t *testing.T, path string, data []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(data, off)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
}

// TestFiemapDiffFindsExactlyTheWrites clones an image, writes 4 KiB pieces
// at random offsets, clones again, and checks that the extent diff of the
// two clones covers every write and little else — on XFS and on btrfs.
func TestFiemapDiffFindsExactlyTheWrites(t *testing.T) {
	for _, fs := range []string{"xfs", "btrfs"} {
		t.Run(fs, func(t *testing.T) {
			mnt := testenv.MountLoop(t, fs, 512<<20)
			img := filepath.Join(mnt, "disk.img")
			const size = 64 << 20
			rng := rand.New(rand.NewPCG(7, 7))
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			require.NoError(t, os.WriteFile(img, data, 0o644))
			c1 := filepath.Join(mnt, "c1")
			require.NoError(t, Clone(img, c1))

			var written []int64
			for i := 0; i < 40; i++ {
				off := rng.Int64N(size/4096) * 4096
				piece := make([]byte, 4096)
				for j := range piece {
					piece[j] = byte(rng.Uint32())
				}
				writeAt(t, img, piece, off)
				copy(data[off:], piece)
				written = append(written, off)
			}
			c2 := filepath.Join(mnt, "c2")
			require.NoError(t, Clone(img, c2))
			got, err := os.ReadFile(c2)
			require.NoError(t, err)
			require.True(t, bytes.Equal(data, got), "the clone is the file as it was")

			e1, err := Extents(c1)
			require.NoError(t, err)
			e2, err := Extents(c2)
			require.NoError(t, err)
			diff := DiffExtents(e1, e2, size)
			blocks := BlocksOf(diff, 65536)
			var want []int64
			for _, off := range written {
				want = append(want, off/65536)
			}
			sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
			for _, b := range want {
				i := sort.Search(len(blocks), func(i int) bool { return blocks[i] >= b })
				require.True(t, i < len(blocks) && blocks[i] == b, "written block %d missing from the diff", b)
			}
			var changed int64
			for _, r := range diff {
				changed += r.Length
			}
			// Copy-on-write granularity is the filesystem block (4 KiB) but
			// the allocator may rewrite a little around each write.
			require.LessOrEqual(t, changed, int64(len(written))*4096*8, "diff should be close to the 160 KiB written, got %d", changed)
			require.Empty(t, DiffExtents(e2, e2, size))
		})
	}
}

func TestCloneRefusedOnExt4(t *testing.T) {
	mnt := testenv.MountLoop(t, "ext4", 64<<20)
	src := filepath.Join(mnt, "a")
	require.NoError(t, os.WriteFile(src, []byte("hello"), 0o644))
	err := Clone(src, filepath.Join(mnt, "b"))
	require.ErrorIs(t, err, ErrNotSupported)
	_, err = os.Stat(filepath.Join(mnt, "b"))
	require.True(t, os.IsNotExist(err), "a failed clone leaves no file")
}

func TestBtrfsSnapshotAndFreeze(t *testing.T) {
	mnt := testenv.MountLoop(t, "btrfs", 256<<20)
	testenv.Run(t, "btrfs", "subvolume", "create", filepath.Join(mnt, "vm"))
	a := filepath.Join(mnt, "vm", "a.img")
	require.NoError(t, os.WriteFile(a, []byte("one"), 0o644))
	root, err := SubvolumeRoot(a)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(mnt, "vm"), root)
	require.NoError(t, os.Mkdir(filepath.Join(root, ".snaps"), 0o700))
	require.NoError(t, SnapshotSubvolume(root, filepath.Join(root, ".snaps"), "s1"))
	require.NoError(t, os.WriteFile(a, []byte("two"), 0o644))
	got, err := os.ReadFile(filepath.Join(root, ".snaps", "s1", "a.img"))
	require.NoError(t, err)
	require.Equal(t, "one", string(got))
	require.NoError(t, DeleteSubvolume(filepath.Join(root, ".snaps"), "s1"))
	_, err = os.Stat(filepath.Join(root, ".snaps", "s1"))
	require.True(t, os.IsNotExist(err))

	require.NoError(t, Freeze(mnt))
	require.NoError(t, Thaw(mnt))
	_, err = SubvolumeRoot(t.TempDir())
	require.ErrorIs(t, err, ErrNotSupported, "the test's temp dir is not on btrfs")
}
