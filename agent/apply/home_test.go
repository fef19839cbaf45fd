package apply

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/protocol/msg"
)

// TestAdoptUpdatesHomeDisksInPlace: the home set keeps only state.json in
// its directory; a move writes into the home disk file itself, where it
// is, and leaves every other byte of it as it was.
func TestAdoptUpdatesHomeDisksInPlace(t *testing.T) {
	ctx := context.Background()
	s := newTestSite(t)
	home := filepath.Join(t.TempDir(), "vm.img")
	content := bytes.Repeat([]byte{7}, 1<<20)
	require.NoError(t, os.WriteFile(home, content, 0o600))
	d := msg.TargetDisk{Name: "d", Size: 1 << 20, BlockSize: 64 << 10}
	ref := msg.TargetRef{Dir: t.TempDir(), Machine: "m", Set: SetHome}

	st, err := s.Adopt(ctx, ref, []msg.TargetDisk{d}, []string{home})
	require.NoError(t, err)
	require.True(t, st.Written, "an adopted set's content is unknown until a move")
	require.Equal(t, home, st.Disks[0].Path)
	_, err = s.Adopt(ctx, ref, []msg.TargetDisk{d}, []string{home})
	require.NoError(t, err, "adopting the same disks again is a no-op")

	setDir, _ := SetDir(ref.Dir, ref.Machine, ref.Set)
	require.NoError(t, s.Close(), "the site holds the adopted disks; this test writes them itself")
	set, err := OpenDiskSet(setDir, SetOptions{})
	require.NoError(t, err)
	require.NoError(t, set.BeginMove(5, []msg.TargetDisk{d}))
	blk := bytes.Repeat([]byte{9}, 64<<10)
	require.NoError(t, set.WriteBlock(0, 3, blk))
	require.NoError(t, set.Finish(5))
	require.NoError(t, set.Close())

	copy(content[3*64<<10:], blk)
	got, err := os.ReadFile(home)
	require.NoError(t, err)
	require.True(t, bytes.Equal(content, got), "the home disk holds the move's block and nothing else changed")
	entries, err := os.ReadDir(setDir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "the set directory holds state.json only")
	sts, err := s.Status(ctx, ref.Dir, ref.Machine)
	require.NoError(t, err)
	require.Equal(t, int64(5), sts[SetHome].Point)
	require.Equal(t, home, sts[SetHome].Disks[0].Path)

	// A move may not resize the home disk.
	set, err = OpenDiskSet(setDir, SetOptions{})
	require.NoError(t, err)
	defer set.Close()
	require.ErrorIs(t, set.BeginMove(6, []msg.TargetDisk{{Name: "d", Size: 2 << 20, BlockSize: 64 << 10}}), ErrRefused)
}

// TestAdoptRefusesWhatItCannotWriteInPlace: an image container and a disk
// of another size are refused, and nothing is written.
func TestAdoptRefusesWhatItCannotWriteInPlace(t *testing.T) {
	ctx := context.Background()
	s := newTestSite(t)
	dir := t.TempDir()
	qcow := filepath.Join(dir, "vm.qcow2")
	hdr := make([]byte, 1<<16)
	copy(hdr, []byte{'Q', 'F', 'I', 0xfb, 0, 0, 0, 3})
	require.NoError(t, os.WriteFile(qcow, hdr, 0o600))
	raw := filepath.Join(dir, "vm.img")
	require.NoError(t, os.WriteFile(raw, make([]byte, 1<<20), 0o600))
	d := msg.TargetDisk{Name: "d", Size: 1 << 20, BlockSize: 64 << 10}
	ref := msg.TargetRef{Dir: filepath.Join(dir, "state"), Machine: "m", Set: SetHome}

	_, err := s.Adopt(ctx, ref, []msg.TargetDisk{d}, []string{qcow})
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrExists)
	_, err = s.Adopt(ctx, ref, []msg.TargetDisk{{Name: "d", Size: 2 << 20, BlockSize: 64 << 10}}, []string{raw})
	require.ErrorIs(t, err, ErrRefused)
	_, err = os.Stat(ref.Dir)
	require.ErrorIs(t, err, os.ErrNotExist, "a refused adopt writes nothing")
}

// TestHomeSetWritesQCOW2AndVHDXInPlace: a qcow2 and a VHDX home disk made
// by qemu-img are adopted and moved in place; qemu-img check stays clean
// and qemu-img reads the guest content the test expects (its own copy).
func TestHomeSetWritesQCOW2AndVHDXInPlace(t *testing.T) {
	qemuImg := testenv.RequireTool(t, "qemu-img")
	ctx := context.Background()
	s := newTestSite(t)
	const size = 4 << 20
	for _, format := range []string{"qcow2", "vhdx"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			raw := filepath.Join(dir, "seed.raw")
			want := bytes.Repeat([]byte("home"), size/4)
			require.NoError(t, os.WriteFile(raw, want, 0o600))
			img := filepath.Join(dir, "vm."+format)
			out, err := exec.Command(qemuImg, "convert", "-f", "raw", "-O", format, raw, img).CombinedOutput()
			require.NoError(t, err, "%s", out)

			d := msg.TargetDisk{Name: "d", Size: size, BlockSize: 64 << 10}
			ref := msg.TargetRef{Dir: filepath.Join(dir, "state"), Machine: "m", Set: SetHome}
			_, err = s.Adopt(ctx, ref, []msg.TargetDisk{d}, []string{img})
			require.NoError(t, err)
			setDir, _ := SetDir(ref.Dir, ref.Machine, ref.Set)
			require.NoError(t, s.Close(), "the site holds the adopted disks; this test writes them itself")
			set, err := OpenDiskSet(setDir, SetOptions{})
			require.NoError(t, err)
			require.NoError(t, set.BeginMove(3, []msg.TargetDisk{d}))
			blk := bytes.Repeat([]byte{0xa5}, 64<<10)
			require.NoError(t, set.WriteBlock(0, 5, blk))
			require.NoError(t, set.ZeroBlock(0, 9))
			require.NoError(t, set.Finish(3))
			require.NoError(t, set.Close())
			copy(want[5*64<<10:], blk)
			clear(want[9*64<<10 : 10*64<<10])

			out, err = exec.Command(qemuImg, "check", "-f", format, img).CombinedOutput()
			require.NoError(t, err, "qemu-img check: %s", out)
			back := filepath.Join(dir, "back.raw")
			out, err = exec.Command(qemuImg, "convert", "-f", format, "-O", "raw", img, back).CombinedOutput()
			require.NoError(t, err, "%s", out)
			got, err := os.ReadFile(back)
			require.NoError(t, err)
			require.True(t, bytes.Equal(want, got), "qemu-img reads what the move wrote, and nothing else changed")
		})
	}
}
