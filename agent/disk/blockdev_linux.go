//go:build linux

package disk

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// statSize returns the size of a regular file or block device.
func statSize(f *os.File) (size int64, block bool, err error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		return fi.Size(), false, nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, true, err
	}
	var sz uint64
	var errno unix.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&sz)))
	}); err != nil {
		return 0, true, err
	}
	if errno != 0 {
		// Not every block driver answers BLKGETSIZE64; seeking to the end works on all.
		end, err := f.Seek(0, 2)
		if err != nil {
			return 0, true, &os.PathError{Op: "BLKGETSIZE64", Path: f.Name(), Err: errno}
		}
		return end, true, nil
	}
	return int64(sz), true, nil
}
