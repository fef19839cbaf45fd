package apply

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// readGuest reads a whole image through agent/disk's reader of format f.
func readGuest(t *testing.T, p string, f disk.Format) []byte {
	t.Helper()
	src, err := disk.Open(p, disk.OpenOptions{Format: f})
	require.NoError(t, err)
	defer src.Close()
	out, err := io.ReadAll(io.NewSectionReader(src, 0, src.Size()))
	require.NoError(t, err)
	return out
}

// TestConvertWritesEachFormatOnce: every disk of a set is written in each
// format and reads back as the set's content; a copy that exists is kept
// (a machine may run on it) and is what RunningDiskPath names; a move
// deletes the copies; a set between points and an unknown format are
// refused.
func TestConvertWritesEachFormatOnce(t *testing.T) {
	site := newTestSite(t)
	dir := t.TempDir()
	im := twoDisks()
	// Raw guest data that begins with a qcow2 magic stays raw.
	copy(im.data[0], "QFI\xfb")
	mixed(rand.New(rand.NewPCG(7, 7)), im)
	copy(im.data[0], "QFI\xfb")
	staged(t, site, dir, "m", 2, im)
	ref := msg.TargetRef{Dir: dir, Machine: "m", Set: SetStaged}
	setDir := setPath(dir, "m", SetStaged)

	for _, f := range ConvertFormats {
		resp, err := site.Convert(t.Context(), ref, f)
		require.NoError(t, err, f)
		require.Len(t, resp.Paths, 2)
		require.Positive(t, resp.Bytes)
		for i, p := range resp.Paths {
			require.Equal(t, ConvertedPath(setDir, im.disks[i].Name, f), p)
			// These formats count whole 512-byte sectors: an odd size
			// grows to the next one, which reads as zeros.
			got, want := readGuest(t, p, f), im.data[i]
			require.Len(t, got, (len(want)+511)/512*512, "%s of disk %d: virtual size", f, i)
			require.True(t, bytes.Equal(want, got[:len(want)]), "%s of disk %d", f, i)
			require.Zero(t, bytes.Count(got[len(want):], []byte{0})-len(got[len(want):]), "%s of disk %d: the tail is zeros", f, i)
		}
	}

	// The machine writes to its copy; converting again keeps that.
	p := ConvertedPath(setDir, "sda", disk.FormatQCOW2)
	before, err := os.ReadFile(p)
	require.NoError(t, err)
	resp, err := site.Convert(t.Context(), ref, disk.FormatQCOW2)
	require.NoError(t, err)
	require.Zero(t, resp.Bytes, "nothing converted again")
	after, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, before, after)
	running, err := RunningDiskPath(setDir, "sda")
	require.NoError(t, err)
	require.Equal(t, p, running)

	// A move removes every copy before its first block.
	d, err := OpenDiskSet(setDir, SetOptions{})
	require.NoError(t, err)
	require.NoError(t, d.BeginMove(3, im.disks))
	for _, f := range ConvertFormats {
		require.NoFileExists(t, ConvertedPath(setDir, "sda", f))
		require.NoFileExists(t, ConvertedPath(setDir, "sdb", f))
	}
	require.NoError(t, d.Close())
	running, err = RunningDiskPath(setDir, "sda")
	require.NoError(t, err)
	require.Equal(t, DiskPath(setDir, "sda"), running)
	_, err = site.Convert(t.Context(), ref, disk.FormatVHDX)
	require.ErrorIs(t, err, protocol.ErrFailedPrecondition)
	require.ErrorContains(t, err, "between points 2 and 3")

	_, err = site.Convert(t.Context(), ref, disk.FormatVHD)
	require.ErrorIs(t, err, protocol.ErrInvalid)
	_, err = site.Convert(t.Context(), msg.TargetRef{Dir: dir, Machine: "m", Set: "live"}, disk.FormatQCOW2)
	require.ErrorIs(t, err, protocol.ErrNotFound)
}
