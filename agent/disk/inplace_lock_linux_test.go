//go:build linux

package disk

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// lockedByOther tests QEMU's lock bytes from a fresh open file
// description, without taking a lock.
func lockedByOther(t *testing.T, img string) bool {
	t.Helper()
	f, err := os.Open(img)
	require.NoError(t, err)
	defer f.Close()
	for _, base := range []int64{qemuLockPermBase, qemuLockSharedBase} {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Start: base, Len: qemuLockBits}
		require.NoError(t, unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk))
		if lk.Type != unix.F_UNLCK {
			return true
		}
	}
	return false
}

func TestInPlaceLockConflictsWithQEMU(t *testing.T) {
	qemuImg := needTool(t, "qemu-img")
	qemuIO := needTool(t, "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "home.qcow2")
	run(t, qemuImg, "create", "-q", "-f", "qcow2", img, "1M")

	// QEMU holds the image: Ferry refuses it.
	q := exec.Command(qemuIO, "-f", "qcow2", "-c", "sleep 60000", img)
	require.NoError(t, q.Start())
	t.Cleanup(func() { _ = q.Process.Kill(); _ = q.Wait() })
	// Wait for qemu-io's locks without taking any (a lock of ours could
	// make qemu-io's own open fail).
	require.Eventually(t, func() bool { return lockedByOther(t, img) }, 10*time.Second, 10*time.Millisecond,
		"qemu-io never took its image locks")
	_, err := OpenInPlace(img, InPlaceOptions{})
	require.ErrorIs(t, err, ErrInUse, "OpenInPlace let a writer in while qemu-io held the image")
	require.NoError(t, q.Process.Kill())
	_ = q.Wait()

	// Ferry holds the image: QEMU refuses to open it for writing or even
	// for a consistent read, and -U (no locks) still works.
	w, err := OpenInPlace(img, InPlaceOptions{})
	require.NoError(t, err)
	require.True(t, lockedByOther(t, img))
	out, err := exec.Command(qemuIO, "-f", "qcow2", "-c", "read 0 512", img).CombinedOutput()
	require.Error(t, err, "qemu-io opened an image Ferry holds:\n%s", out)
	require.Contains(t, string(out), "lock", "qemu-io failed for another reason than the lock")
	out, err = exec.Command(qemuImg, "info", img).CombinedOutput()
	require.Error(t, err, "qemu-img info opened an image Ferry holds:\n%s", out)
	run(t, qemuImg, "info", "-U", img)
	_, err = OpenInPlace(img, InPlaceOptions{})
	require.ErrorIs(t, err, ErrInUse, "a second in-place writer was let in")
	require.NoError(t, w.Close())
	run(t, qemuImg, "info", img)
}

func TestInPlaceBlockDeviceExclusive(t *testing.T) {
	testenv.RequireRoot(t)
	losetup := testenv.RequireTool(t, "losetup")
	const size = 4 << 20
	file := filepath.Join(t.TempDir(), "home.raw")
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i * 7)
	}
	require.NoError(t, os.WriteFile(file, want, 0o600))
	out, err := exec.Command(losetup, "-f", "--show", file).CombinedOutput()
	require.NoError(t, err, "%s", out)
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command(losetup, "-d", dev).Run() })

	w, err := OpenInPlace(dev, InPlaceOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(size), w.Size())
	_, err = OpenInPlace(dev, InPlaceOptions{})
	require.ErrorIs(t, err, ErrInUse, "a second writer opened the block device")
	for _, op := range genOps(5, size, 100) {
		require.NoError(t, op.apply(w))
		copy(want[op.off:], op.data())
	}
	require.NoError(t, w.Zero(12345, 70000))
	clear(want[12345 : 12345+70000])
	require.NoError(t, w.Close())
	got, err := os.ReadFile(file)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "block device content differs at %d", firstDiff(got, want))
}
