//go:build linux

package apply

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/ferrydr/ferry/protocol/msg"
)

// qemuWrite tries to write the image from another process, as a QEMU
// started on it would, and returns qemu-io's output and error.
func qemuWrite(t *testing.T, format, img string) (string, error) {
	t.Helper()
	qemuIO := testenv.RequireTool(t, "qemu-io")
	out, err := exec.Command(qemuIO, "-f", format, "-c", "write -P 0x5a 0 4k", img).CombinedOutput()
	return string(out), err
}

// requireRefusedByLock: QEMU could not open the image because of a lock.
func requireRefusedByLock(t *testing.T, format, img, why string) {
	t.Helper()
	out, err := qemuWrite(t, format, img)
	require.Error(t, err, "%s: qemu-io wrote the image:\n%s", why, out)
	require.Contains(t, out, "Failed to get", "%s: qemu-io failed for another reason than a lock:\n%s", why, out)
	require.Contains(t, out, "lock", "%s:\n%s", why, out)
}

// lockedByOther tests QEMU's lock bytes (100..104, 200..204) from a fresh
// open file description, without taking a lock.
func lockedByOther(t *testing.T, img string) bool {
	t.Helper()
	f, err := os.Open(img)
	require.NoError(t, err)
	defer f.Close()
	for _, base := range []int64{100, 200} {
		lk := unix.Flock_t{Type: unix.F_WRLCK, Start: base, Len: 5}
		require.NoError(t, unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk))
		if lk.Type != unix.F_UNLCK {
			return true
		}
	}
	return false
}

func newHoldSite(t *testing.T, registry string) *Site {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Logger = testLogger(t)
	cfg.HomeSets = registry
	s, err := NewSite(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// TestHomeSetHeldWhileReplica: from adopt until the machine is started on
// them, the home disks are held by the agent: a QEMU opening them for
// writing is refused by the lock, moves still write them, an agent
// restart holds them again, and a start through the driver (MarkWritten)
// releases them for good — QEMU can then open them, also after the next
// restart.
func TestHomeSetHeldWhileReplica(t *testing.T) {
	ctx := context.Background()
	for i, format := range []string{"qcow2", "raw"} {
		t.Run(format, func(t *testing.T) {
			f := newHomeFixture(t, format, uint64(20+i))
			registry := filepath.Join(t.TempDir(), "home-sets.json")
			s := newHoldSite(t, registry)
			ref := msg.TargetRef{Dir: f.dir, Machine: "m", Set: SetHome}
			_, err := s.Adopt(ctx, ref, []msg.TargetDisk{f.disk}, []string{f.img})
			require.NoError(t, err)
			requireRefusedByLock(t, format, f.img, "after adopt")

			// A move goes through the agent's own hold.
			blocks, want, _ := f.changes(uint64(20 + i))
			im := newImage(f.disk)
			var refs []blockRef
			for _, b := range blocks {
				copy(im.data[0][int64(b.Block)*undoBS:], b.Data)
				refs = append(refs, blockRef{0, b.Block})
			}
			h := header(f.dir, "m", SetHome, 0, 3, im)
			h.Force = true
			_, sv, err := restoreTCP(t, s, h, im.encode(t, refs))
			require.NoError(t, err)
			require.NoError(t, sv.err)
			requireRefusedByLock(t, format, f.img, "after a move")

			// The agent stops: the lock goes with it; a new agent takes it
			// again before anything else.
			require.NoError(t, s.Close())
			out, err := exec.Command("qemu-img", "info", "-f", format, f.img).CombinedOutput()
			require.NoError(t, err, "the stopped agent still holds the image: %s", out)
			s = newHoldSite(t, registry)
			require.NoError(t, s.HoldHomes(ctx))
			requireRefusedByLock(t, format, f.img, "after an agent restart")
			require.True(t, bytes.Equal(want, f.held(t)), "the move's content is on the home disk")

			// The machine is started on its home disks: released for good.
			require.NoError(t, s.MarkWritten(ctx, ref))
			qout, err := qemuWrite(t, format, f.img)
			require.NoError(t, err, "the agent still holds disks a machine was started on: %s", qout)
			require.NoError(t, s.Close())
			s = newHoldSite(t, registry)
			require.NoError(t, s.HoldHomes(ctx))
			qout, err = qemuWrite(t, format, f.img)
			require.NoError(t, err, "a restarted agent took disks a machine runs on: %s", qout)
		})
	}
}

// TestHomeBlockDeviceHeldExclusively: a home disk that is a block device
// is opened O_EXCL while held: another exclusive opener (mkfs, a mount)
// is refused with "busy", and QEMU by its lock.
func TestHomeBlockDeviceHeldExclusively(t *testing.T) {
	testenv.RequireRoot(t)
	losetup := testenv.RequireTool(t, "losetup")
	ctx := context.Background()
	f := newHomeFixture(t, "raw", 30)
	out, err := exec.Command(losetup, "-f", "--show", f.img).CombinedOutput()
	require.NoError(t, err, "%s", out)
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command(losetup, "-d", dev).Run() })
	f.img = dev

	s := newHoldSite(t, filepath.Join(t.TempDir(), "home-sets.json"))
	ref := msg.TargetRef{Dir: f.dir, Machine: "m", Set: SetHome}
	_, err = s.Adopt(ctx, ref, []msg.TargetDisk{f.disk}, []string{dev})
	require.NoError(t, err)
	mkfs := testenv.RequireTool(t, "mkfs.ext4")
	out, err = exec.Command(mkfs, "-q", "-F", dev).CombinedOutput()
	require.Error(t, err, "mkfs opened a home disk the agent holds:\n%s", out)
	require.Contains(t, strings.ToLower(string(out)), "in use", "mkfs failed for another reason: %s", out)
	requireRefusedByLock(t, "raw", dev, "a block device")
	require.NoError(t, s.MarkWritten(ctx, ref))
	qout, err := qemuWrite(t, "raw", dev)
	require.NoError(t, err, "%s", qout)
}

// TestHomeSetHeldFromTheNextMove: an agent that starts while another
// process holds a listed home disk cannot hold it then (reported, still
// listed); once that process is gone, the next move holds it again.
func TestHomeSetHeldFromTheNextMove(t *testing.T) {
	ctx := context.Background()
	qemuIO := testenv.RequireTool(t, "qemu-io")
	f := newHomeFixture(t, "qcow2", 50)
	registry := filepath.Join(t.TempDir(), "home-sets.json")
	s := newHoldSite(t, registry)
	ref := msg.TargetRef{Dir: f.dir, Machine: "m", Set: SetHome}
	_, err := s.Adopt(ctx, ref, []msg.TargetDisk{f.disk}, []string{f.img})
	require.NoError(t, err)
	require.NoError(t, s.Close())

	q := exec.Command(qemuIO, "-f", "qcow2", "-c", "sleep 60000", f.img)
	require.NoError(t, q.Start())
	t.Cleanup(func() { _ = q.Process.Kill(); _ = q.Wait() })
	// Wait for qemu-io's locks without taking any (a lock of ours could
	// make qemu-io's own open fail).
	require.Eventually(t, func() bool { return lockedByOther(t, f.img) }, 10*time.Second, 20*time.Millisecond,
		"qemu-io never took its locks")
	s = newHoldSite(t, registry)
	require.ErrorIs(t, s.HoldHomes(ctx), disk.ErrInUse, "the agent cannot hold disks another process holds")
	require.NoError(t, q.Process.Kill())
	_ = q.Wait()

	blocks, want, _ := f.changes(50)
	im := newImage(f.disk)
	var refs []blockRef
	for _, b := range blocks {
		copy(im.data[0][int64(b.Block)*undoBS:], b.Data)
		refs = append(refs, blockRef{0, b.Block})
	}
	h := header(f.dir, "m", SetHome, 0, 3, im)
	h.Force = true
	_, sv, err := restoreTCP(t, s, h, im.encode(t, refs))
	require.NoError(t, err)
	require.NoError(t, sv.err)
	requireRefusedByLock(t, "qcow2", f.img, "after the next move")
	require.True(t, bytes.Equal(want, f.held(t)))
}
