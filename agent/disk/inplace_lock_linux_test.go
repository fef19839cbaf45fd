//go:build linux

package disk

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

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
