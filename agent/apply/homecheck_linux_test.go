package apply

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/protocol/msg"
)

// TestCheckHomeRefusesTheAgentsOwnDisk: a home disk that is the block
// device the agent runs from — the device holding the filesystem of one of
// its files, directly or through a partition of it (a physical or in-guest
// source) — is refused with the reason and both alternatives (--target to
// a new disk, a full copy); the same device is taken when the agent's
// files are elsewhere, so the check is about the agent's own files, not
// about the device being mounted.
func TestCheckHomeRefusesTheAgentsOwnDisk(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTool(t, "losetup")
	testenv.RequireTool(t, "mkfs.ext4")
	testenv.RequireTool(t, "partx")
	const size, start = 64 << 20, 2048 // bytes; first sector of partition 1
	img := filepath.Join(t.TempDir(), "disk.img")
	mbr := make([]byte, 512)
	e := mbr[446:462] // partition 1: Linux, from sector 2048 to the end
	e[4] = 0x83
	binary.LittleEndian.PutUint32(e[8:], start)
	binary.LittleEndian.PutUint32(e[12:], size/512-start)
	mbr[510], mbr[511] = 0x55, 0xaa
	require.NoError(t, os.WriteFile(img, mbr, 0o600))
	require.NoError(t, os.Truncate(img, size))
	dev := strings.TrimSpace(testenv.Run(t, "losetup", "-f", "--show", img))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	// partx adds the partition through BLKPG (the kernel here may not
	// parse partition tables itself).
	testenv.Run(t, "partx", "-a", dev)
	t.Cleanup(func() { exec.Command("partx", "-d", dev).Run() })
	part := dev + "p1"
	require.Eventually(t, func() bool { _, err := os.Stat(part); return err == nil }, 10*time.Second, 50*time.Millisecond, "no partition device %s", part)
	testenv.Run(t, "mkfs.ext4", "-q", "-F", part)
	mnt := t.TempDir()
	testenv.Run(t, "mount", part, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	self := filepath.Join(mnt, "ferry-agent")
	require.NoError(t, os.WriteFile(self, []byte("the agent's executable"), 0o700))

	for _, c := range []struct {
		path string
		size int64
	}{{dev, size}, {part, size - start*512}} {
		err := checkHomeFormat(c.path, msg.TargetDisk{Name: "d", Size: c.size}, []string{"/nonexistent", self})
		require.ErrorIs(t, err, ErrRefused, c.path)
		require.Contains(t, err.Error(), "this agent runs from it", c.path)
		require.Contains(t, err.Error(), "--target", c.path)
		require.Contains(t, err.Error(), "full copy", c.path)

		require.NoError(t, checkHomeFormat(c.path, msg.TargetDisk{Name: "d", Size: c.size}, []string{t.TempDir()}),
			"%s holds none of the agent's files", c.path)
	}
	on, err := runsOn(img, []string{self})
	require.NoError(t, err)
	require.Empty(t, on, "an image file is never the agent's own system disk")
}
