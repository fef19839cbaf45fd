//go:build linux

package apply

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// TestOnRealFilesystems runs a staging, a move with zero blocks and a clone
// on XFS (reflink), btrfs and ext4 loop mounts: zero blocks become holes
// everywhere, clones are reflinks where the filesystem has them and sparse
// copies where it does not.
func TestOnRealFilesystems(t *testing.T) {
	for _, c := range []struct {
		fs      string
		reflink bool
	}{{"xfs", true}, {"btrfs", true}, {"ext4", false}} {
		t.Run(c.fs, func(t *testing.T) {
			mnt := testenv.MountLoop(t, c.fs, 256<<20)
			site := newTestSite(t)
			dir := filepath.Join(mnt, "targets")
			rng := rand.New(rand.NewPCG(21, 22))
			p1 := twoDisks()
			p1.fill(rng, 0, 0, p1.disks[0].Size, false)
			p1.fill(rng, 1, 0, p1.disks[1].Size, true)
			staged(t, site, dir, "m", 1, p1)
			sda := DiskPath(setPath(dir, "m", SetStaged), "sda")
			require.True(t, isData(t, sda, 0, 1<<20))

			// Point 2 zeroes blocks 2..5 of sda: holes, not written zeros.
			p2 := p1.clone()
			clear(p2.data[0][2<<16 : 6<<16])
			_, s, err := restoreTCP(t, site, header(dir, "m", SetStaged, 1, 2, p2), p2.encode(t, p2.diff(p1)))
			require.NoError(t, err)
			require.Equal(t, int64(4), s.res.ZeroBlocks)
			require.True(t, isHole(t, sda, 2<<16, 4<<16), "zero blocks are punched out on %s", c.fs)
			require.True(t, isData(t, sda, 6<<16, 64<<10))
			requireContent(t, setPath(dir, "m", SetStaged), p2)

			resp, err := site.Clone(t.Context(), dir, "m", "test-1")
			require.NoError(t, err)
			require.Equal(t, c.reflink, resp.Reflinked)
			if c.reflink {
				require.Zero(t, resp.Bytes)
			} else {
				require.Positive(t, resp.Bytes)
				require.True(t, isHole(t, DiskPath(setPath(dir, "m", "test-1"), "sda"), 2<<16, 4<<16), "the copy keeps the holes")
			}
			requireContent(t, setPath(dir, "m", "test-1"), p2)

			// Staging goes on under the clone: the clone keeps point 2.
			p3 := p2.clone()
			mutate(rng, p3)
			_, _, err = restoreTCP(t, site, header(dir, "m", SetStaged, 2, 3, p3), p3.encode(t, p3.diff(p2)))
			require.NoError(t, err)
			requireContent(t, setPath(dir, "m", "test-1"), p2)
			requireContent(t, setPath(dir, "m", SetStaged), p3)
		})
	}
}
