//go:build linux

package disk

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// QEMU's image locking (block/file-posix.c, "raw_apply_lock_bytes"): each
// open of an image holds shared OFD locks on one byte per permission it
// uses, at qemuLockPermBase+bit, and one byte per permission it does not
// let others use, at qemuLockSharedBase+bit. Before taking a permission an
// opener tests (F_OFD_GETLK for a write lock) the "not shared" byte of
// that permission, and before refusing to share one it tests the "uses"
// byte. The permission bits are consistent-read, write,
// write-unchanged, resize and (older QEMU) graph-mod.
//
// An in-place writer uses every permission and shares none, so it locks
// bytes 100..104 and 200..204 and then checks that no other open file
// description holds any of them.
const (
	qemuLockPermBase   = 100
	qemuLockSharedBase = 200
	qemuLockBits       = 5
)

const excl = unix.O_EXCL

func isBusy(err error) bool { return errors.Is(err, syscall.EBUSY) }

func lockImage(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		for _, base := range []int64{qemuLockPermBase, qemuLockSharedBase} {
			lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: base, Len: qemuLockBits}
			if err := unix.FcntlFlock(fd, unix.F_OFD_SETLK, &lk); err != nil {
				if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
					lerr = fmt.Errorf("%w: byte %d locked by another process", ErrInUse, base)
				} else {
					lerr = fmt.Errorf("OFD lock: %w", err)
				}
				return
			}
		}
		for _, base := range []int64{qemuLockPermBase, qemuLockSharedBase} {
			for b := int64(0); b < qemuLockBits; b++ {
				lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: base + b, Len: 1}
				if err := unix.FcntlFlock(fd, unix.F_OFD_GETLK, &lk); err != nil {
					lerr = fmt.Errorf("OFD lock test: %w", err)
					return
				}
				if lk.Type != unix.F_UNLCK {
					lerr = fmt.Errorf("%w: lock byte %d is held by another process (QEMU image locking)", ErrInUse, base+b)
					return
				}
			}
		}
	}); err != nil {
		return err
	}
	return lerr
}

// punchHole deallocates a range of a regular file; reads return zeros.
func punchHole(f *os.File, off, n int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}
