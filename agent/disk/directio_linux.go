//go:build linux

package disk

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// openDirect opens a block device a second time with O_DIRECT, so that
// its reads bypass the device's page cache (direct.go says why). An error
// (EINVAL: the device refuses O_DIRECT) leaves the caller to read through
// the cache.
func openDirect(path string) (directFile, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, err
	}
	r, err := newAlignedReader(f, logicalBlockSize(f))
	if err != nil {
		f.Close()
		return nil, &os.PathError{Op: "BLKSSZGET", Path: path, Err: err}
	}
	return r, nil
}

// logicalBlockSize is the device's logical block size (BLKSSZGET), the
// unit of O_DIRECT offsets and lengths; 4096 if the device does not say.
func logicalBlockSize(f *os.File) int64 {
	rc, err := f.SyscallConn()
	if err != nil {
		return memAlign
	}
	var sz int32
	var errno unix.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKSSZGET, uintptr(unsafe.Pointer(&sz)))
	}); err != nil || errno != 0 || sz <= 0 {
		return memAlign
	}
	return int64(sz)
}
