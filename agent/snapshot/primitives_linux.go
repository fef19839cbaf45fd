package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Clone makes dst a reflink copy of src (FICLONE). The kernel flushes src's
// dirty pages and takes its inode lock, so the clone is an atomic view of
// src with respect to writes.
func Clone(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
			return fmt.Errorf("reflink %s: %w (%v)", src, ErrNotSupported, err)
		}
		return fmt.Errorf("reflink %s: %w", src, err)
	}
	return nil
}

// FIEMAP ioctl layout (linux/fiemap.h).
const (
	fsIocFiemap     = 0xC020660B
	fiemapFlagSync  = 0x1
	fiemapExtLast   = 0x1
	fiemapHeaderLen = 32
	fiemapExtentLen = 56
	fiemapBatch     = 256

	// Extent flags that make a physical address unusable for comparison.
	FlagUnknown   = 0x2
	FlagDelalloc  = 0x4
	FlagEncoded   = 0x8
	FlagInline    = 0x200
	FlagTail      = 0x400
	FlagUnwritten = 0x800
	FlagShared    = 0x2000
)

// Extents returns a file's extent map (FIEMAP, synced first).
func Extents(path string) ([]PhysExtent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, fiemapHeaderLen+fiemapBatch*fiemapExtentLen)
	var out []PhysExtent
	var start uint64
	for {
		clear(buf)
		*(*uint64)(unsafe.Pointer(&buf[0])) = start
		*(*uint64)(unsafe.Pointer(&buf[8])) = ^uint64(0) - start
		*(*uint32)(unsafe.Pointer(&buf[16])) = fiemapFlagSync
		*(*uint32)(unsafe.Pointer(&buf[24])) = fiemapBatch
		_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0])))
		if errno != 0 {
			if errno == unix.EOPNOTSUPP || errno == unix.ENOTTY {
				return nil, fmt.Errorf("fiemap %s: %w", path, ErrNotSupported)
			}
			return nil, fmt.Errorf("fiemap %s: %w", path, errno)
		}
		n := *(*uint32)(unsafe.Pointer(&buf[20]))
		if n == 0 {
			return out, nil
		}
		last := false
		for i := uint32(0); i < n; i++ {
			e := buf[fiemapHeaderLen+int(i)*fiemapExtentLen:]
			pe := PhysExtent{
				Logical:  int64(*(*uint64)(unsafe.Pointer(&e[0]))),
				Physical: int64(*(*uint64)(unsafe.Pointer(&e[8]))),
				Length:   int64(*(*uint64)(unsafe.Pointer(&e[16]))),
				Flags:    *(*uint32)(unsafe.Pointer(&e[40])),
			}
			out = append(out, pe)
			if pe.Flags&fiemapExtLast != 0 {
				last = true
			}
			start = uint64(pe.Logical + pe.Length)
		}
		if last {
			return out, nil
		}
	}
}

// fsfreeze ioctls (linux/fs.h: _IOWR('X', 119/120, int)).
const (
	fiFreeze = 0xC0045877
	fiThaw   = 0xC0045878
)

// Freeze freezes the filesystem mounted at mount (FIFREEZE). The caller
// must Thaw it; Ferry bounds the frozen time (DESIGN.md: ≤ 2 s).
func Freeze(mount string) error {
	f, err := os.Open(mount)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), fiFreeze, 0); err != nil {
		return fmt.Errorf("freeze %s: %w", mount, err)
	}
	return nil
}

// FreezeFile freezes the filesystem of an open directory (FIFREEZE); a
// caller that must thaw without touching any filesystem keeps it open.
func FreezeFile(dir *os.File) error {
	if err := unix.IoctlSetInt(int(dir.Fd()), fiFreeze, 0); err != nil {
		return fmt.Errorf("freeze %s: %w", dir.Name(), err)
	}
	return nil
}

// ThawFile thaws the filesystem of an open directory (FITHAW).
func ThawFile(dir *os.File) error {
	if err := unix.IoctlSetInt(int(dir.Fd()), fiThaw, 0); err != nil {
		return fmt.Errorf("thaw %s: %w", dir.Name(), err)
	}
	return nil
}

// Thaw thaws a frozen filesystem (FITHAW).
func Thaw(mount string) error {
	f, err := os.Open(mount)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), fiThaw, 0); err != nil {
		return fmt.Errorf("thaw %s: %w", mount, err)
	}
	return nil
}

// btrfs ioctls (linux/btrfs.h).
const (
	btrfsSuperMagic      = 0x9123683E
	btrfsFirstFreeObjID  = 256
	btrfsIocSnapCreateV2 = 0x50009417
	btrfsIocSnapDestroy  = 0x5000940F
	btrfsSubvolRdonly    = 1 << 1
	btrfsVolNameMaxV2    = 4039
	btrfsVolArgsV2Size   = 4096
	btrfsVolArgsSize     = 4096
	btrfsPathNameMax     = 4087
)

// SubvolumeRoot returns the root directory of the btrfs subvolume holding
// path, or ErrNotSupported when path is not on btrfs.
func SubvolumeRoot(path string) (string, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return "", err
	}
	if uint32(fs.Type) != btrfsSuperMagic {
		return "", fmt.Errorf("%s is not on btrfs: %w", path, ErrNotSupported)
	}
	dir, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		dir = filepath.Dir(dir)
	}
	for {
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err != nil {
			return "", err
		}
		if st.Ino == btrfsFirstFreeObjID {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no subvolume root above %s: %w", path, ErrNotSupported)
		}
		dir = parent
	}
}

// SnapshotSubvolume creates a read-only snapshot of subvolume src named
// name inside directory destDir (on the same btrfs filesystem). It is
// atomic for every file of the subvolume.
func SnapshotSubvolume(src, destDir, name string) error {
	if len(name) > btrfsVolNameMaxV2 {
		return fmt.Errorf("snapshot name too long")
	}
	s, err := os.Open(src)
	if err != nil {
		return err
	}
	defer s.Close()
	d, err := os.Open(destDir)
	if err != nil {
		return err
	}
	defer d.Close()
	// Write back the subvolume's dirty pages first. The snapshot flushes
	// them itself, one file after another, and a buffered write landing
	// during that flush can be caught in one file while an earlier write
	// to another file is not; starting clean makes that window short. Only
	// a paused writer closes it (see btrfsView).
	if err := unix.Syncfs(int(s.Fd())); err != nil {
		return fmt.Errorf("syncfs of %s: %w", src, err)
	}
	var args [btrfsVolArgsV2Size]byte
	*(*int64)(unsafe.Pointer(&args[0])) = int64(s.Fd())
	*(*uint64)(unsafe.Pointer(&args[16])) = btrfsSubvolRdonly
	copy(args[56:], name) // after fd, transid, flags, unused[4]
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, d.Fd(), btrfsIocSnapCreateV2, uintptr(unsafe.Pointer(&args[0])))
	if errno != 0 {
		return fmt.Errorf("btrfs snapshot of %s: %w", src, errno)
	}
	return nil
}

// DeleteSubvolume removes a snapshot created by SnapshotSubvolume.
func DeleteSubvolume(destDir, name string) error {
	d, err := os.Open(destDir)
	if err != nil {
		return err
	}
	defer d.Close()
	var args [btrfsVolArgsSize]byte
	copy(args[8:8+btrfsPathNameMax], name)
	var errno syscall.Errno
	for i := 0; i < 50; i++ {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, d.Fd(), btrfsIocSnapDestroy, uintptr(unsafe.Pointer(&args[0])))
		if errno != unix.EBUSY {
			break
		}
		time.Sleep(20 * time.Millisecond) // a reader may still hold a file open
	}
	if errno != 0 && errno != unix.ENOENT {
		return fmt.Errorf("btrfs delete snapshot %s: %w", name, errno)
	}
	return nil
}

// fsNames are the filesystems a view's reason may name (statfs f_type,
// linux/magic.h).
var fsNames = map[uint32]string{
	0xEF53:     "ext4", // also ext2 and ext3
	0x58465342: "xfs",
	0x9123683E: "btrfs",
	0x01021994: "tmpfs",
	0x858458F6: "ramfs",
	0x6969:     "nfs",
	0xFF534D42: "cifs",
	0x2FC12FC1: "zfs",
	0x794C7630: "overlayfs",
	0x65735546: "fuse",
	0x4D44:     "vfat",
	0x5346544E: "ntfs",
	0xF2F52010: "f2fs",
}

// FSType names the filesystem holding path ("" when unknown).
func FSType(path string) string {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return ""
	}
	if n, ok := fsNames[uint32(fs.Type)]; ok {
		return n
	}
	return fmt.Sprintf("type %#x", uint32(fs.Type))
}
