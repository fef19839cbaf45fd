package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
)

// pointAfterNow returns a point whose view was certainly taken after the
// caller's last change to the image: the second point made after the
// newest one that exists now (the first may have been cut from a view
// taken before the change).
func pointAfterNow(t *testing.T, c *Controller, machine string) Point {
	t.Helper()
	var newest int64
	if ps := c.Points(machine); len(ps) > 0 {
		newest = ps[len(ps)-1].ID
	}
	p := c.WaitPoint(machine, newest, 120*time.Second)
	return c.WaitPoint(machine, p.ID, 120*time.Second)
}

// requireExport exports a point and requires its disk to equal want, the
// bytes the test kept itself; on a difference it names the first differing
// offset.
func requireExport(t *testing.T, c *Controller, machine string, p Point, disk string, want []byte) {
	t.Helper()
	dir := c.Export(machine, p.ID)
	defer os.RemoveAll(dir)
	got, err := os.ReadFile(filepath.Join(dir, disk+".raw"))
	require.NoError(t, err)
	require.Equal(t, len(want), len(got), "point %d: disk %s size", p.ID, disk)
	if !bytes.Equal(want, got) {
		i := 0
		for i < len(want) && want[i] == got[i] {
			i++
		}
		require.Failf(t, "exported disk differs", "point %d: disk %s differs from the image at offset %d", p.ID, disk, i)
	}
}

// TestShrinkThenGrowNeverShowsOldData: an 8 MiB image with data everywhere
// is truncated to 4 MiB (the next point is 4 MiB: its first 4 MiB), then
// extended back to 8 MiB (the next point's second half is zeros, as the
// image reads) — the old data of the truncated range never comes back. A
// third round writes the old data back into the regrown range and then
// shrinks and regrows again within one block, so the block at the end is
// covered too. On XFS (reflink views, extent diff) and ext4 (direct
// reads, allocation scan): both change-detection paths.
func TestShrinkThenGrowNeverShowsOldData(t *testing.T) {
	for _, fs := range []string{"xfs", "ext4"} {
		t.Run(fs, func(t *testing.T) {
			mnt := testenv.MountLoop(t, fs, 256<<20)
			const size = 8 << 20
			img := filepath.Join(mnt, "disk.img")
			initial := makeImage(t, img, 31, size)
			require.False(t, bytes.Equal(initial[size/2:], make([]byte, size/2)), "the second half must hold data")

			c := StartController(t)
			EnrollAgent(t, c, c.Addr, "src")
			c.MustFerry("policies", "create", "fast", "--rp-every", "1s")
			c.MustFerry("protect", "vm", "--agent", "src", "--disk", "root="+img, "--policy", "fast")
			first := c.WaitPoint("vm", 0, 120*time.Second)
			requireExport(t, c, "vm", first, "root", initial)

			// Shrink to 4 MiB.
			require.NoError(t, os.Truncate(img, size/2))
			small := pointAfterNow(t, c, "vm")
			requireExport(t, c, "vm", small, "root", initial[:size/2])

			// Grow back to 8 MiB: the new half reads zeros.
			require.NoError(t, os.Truncate(img, size))
			grown := append(append([]byte(nil), initial[:size/2]...), make([]byte, size/2)...)
			onDisk, err := os.ReadFile(img)
			require.NoError(t, err)
			require.Equal(t, grown, onDisk, "precondition: a regrown file reads zeros")
			p := pointAfterNow(t, c, "vm")
			requireExport(t, c, "vm", p, "root", grown)

			// Old data written back into the regrown range is shipped too.
			f, err := os.OpenFile(img, os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteAt(initial[size/2:], size/2)
			require.NoError(t, err)
			require.NoError(t, f.Close())
			p = pointAfterNow(t, c, "vm")
			requireExport(t, c, "vm", p, "root", initial)

			// Shrink into the middle of a block, then grow back: the bytes
			// cut off inside the last block read zeros afterwards.
			cut := int64(size/2 + 1000)
			require.NoError(t, os.Truncate(img, cut))
			p = pointAfterNow(t, c, "vm")
			requireExport(t, c, "vm", p, "root", initial[:cut])
			require.NoError(t, os.Truncate(img, size))
			grown = append(append([]byte(nil), initial[:cut]...), make([]byte, size-cut)...)
			p = pointAfterNow(t, c, "vm")
			requireExport(t, c, "vm", p, "root", grown)
			t.Logf("points checked up to %d", p.ID)
		})
	}
}
