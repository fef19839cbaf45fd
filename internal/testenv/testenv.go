// Package testenv gives tests the machine capabilities they need — root,
// tools, loop-mounted filesystems — and decides what happens when one is
// missing: skip with a clear message, or fail under FERRY_CI=1 where a
// skipped test that should have run is a defect. It is a leaf package.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// InCI reports whether FERRY_CI=1: missing capabilities fail tests.
func InCI() bool { return os.Getenv("FERRY_CI") == "1" }

// Require skips (or, in CI, fails) the test when ok is false.
func Require(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("FERRY_CI=1 and a required capability is missing: %s", why)
	}
	t.Skipf("skipping: %s", why)
}

// RequireRoot needs root on Linux.
func RequireRoot(t testing.TB) {
	t.Helper()
	Require(t, runtime.GOOS == "linux" && os.Geteuid() == 0, "needs root on Linux")
}

// RequireTool needs a program on PATH and returns its path.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Require(t, err == nil, fmt.Sprintf("needs %s on PATH (scripts/test-deps.sh installs it)", name))
	return p
}

// Run runs a command and fails the test on error, showing its output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// MountLoop creates a sparse image of size bytes, makes a filesystem of
// fstype (xfs with reflink, btrfs, ext4) on a loop device and mounts it
// under a temporary directory. Everything is undone at cleanup.
func MountLoop(t testing.TB, fstype string, size int64) string {
	t.Helper()
	RequireRoot(t)
	mkfs := map[string][]string{
		"xfs":   {"mkfs.xfs", "-q", "-f", "-m", "reflink=1"},
		"btrfs": {"mkfs.btrfs", "-q", "-f"},
		"ext4":  {"mkfs.ext4", "-q", "-F"},
	}[fstype]
	if mkfs == nil {
		t.Fatalf("MountLoop: unknown filesystem %q", fstype)
	}
	RequireTool(t, mkfs[0])
	RequireTool(t, "losetup")
	if fstype == "xfs" && size < 512<<20 {
		size = 512 << 20 // mkfs.xfs refuses filesystems under 300 MB; the image is sparse
	}
	dev := LoopDevice(t, size)
	Run(t, mkfs[0], append(mkfs[1:], dev)...)
	return mountUnder(t, "mnt", dev)
}

// mountUnder mounts (mount ARGS… DIR) on a new directory named name in a
// temporary directory, and unmounts it at cleanup (lazily if it is busy).
func mountUnder(t testing.TB, name string, args ...string) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	Run(t, "mount", append(args, mnt)...)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			exec.Command("umount", "-l", mnt).Run()
			t.Logf("umount %s: %v %s", mnt, err, out)
		}
	})
	return mnt
}

// MountMemory mounts a memory filesystem (tmpfs or ramfs) under a
// temporary directory; it is unmounted at cleanup.
func MountMemory(t testing.TB, fstype string) string {
	t.Helper()
	RequireRoot(t)
	if fstype != "tmpfs" && fstype != "ramfs" {
		t.Fatalf("MountMemory: %q is not tmpfs or ramfs", fstype)
	}
	return mountUnder(t, fstype, "-t", fstype, "none")
}

// LoopDevice attaches a sparse file of size bytes to a new loop device
// (losetup -f) and returns the device; it is detached at cleanup.
func LoopDevice(t testing.TB, size int64) string {
	t.Helper()
	dev, _ := LoopFile(t, size)
	return dev
}

// LoopFile is LoopDevice that also returns the backing file, for tests
// that compare what was read with what the device holds.
func LoopFile(t testing.TB, size int64) (dev, backing string) {
	t.Helper()
	RequireRoot(t)
	RequireTool(t, "losetup")
	backing = filepath.Join(t.TempDir(), "loop.img")
	f, err := os.Create(backing)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dev = strings.TrimSpace(Run(t, "losetup", "-f", "--show", backing))
	t.Cleanup(func() {
		// Partitions a test added through BLKPG (partx, sfdisk) outlive
		// the detach of a loop device without partition scanning, and
		// the next test given this device number then cannot add its own.
		exec.Command("partx", "-d", dev).Run()
		exec.Command("losetup", "-d", dev).Run()
	})
	return dev, backing
}

// MountExt4 makes an ext4 filesystem on dev (its journal and inode
// tables written now, not lazily in the background) and mounts it under a
// temporary directory; at cleanup the filesystem is thawed (in case a
// test left it frozen) and unmounted.
func MountExt4(t testing.TB, dev string) string {
	t.Helper()
	RequireTool(t, "mkfs.ext4")
	Run(t, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
	mnt := mountUnder(t, "mnt", "-t", "ext4", dev)
	// Registered after the unmount, so it runs before it.
	t.Cleanup(func() { exec.Command("fsfreeze", "-u", mnt).Run() })
	return mnt
}

// MountXFS makes an XFS filesystem on dev (mkfs.xfs refuses one under
// 300 MB) and mounts it under a temporary directory; at cleanup the
// filesystem is thawed (in case a test left it frozen) and unmounted.
func MountXFS(t testing.TB, dev string) string {
	t.Helper()
	RequireTool(t, "mkfs.xfs")
	Run(t, "mkfs.xfs", "-q", "-f", dev)
	mnt := mountUnder(t, "mnt", "-t", "xfs", dev)
	// Registered after the unmount, so it runs before it.
	t.Cleanup(func() { exec.Command("fsfreeze", "-u", mnt).Run() })
	return mnt
}
