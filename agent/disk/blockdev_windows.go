//go:build windows

package disk

import (
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/windows"
)

// ioctlDiskGetLengthInfo is IOCTL_DISK_GET_LENGTH_INFO from winioctl.h.
const ioctlDiskGetLengthInfo = 0x0007405C

// statSize returns the size of a file or of a raw device such as
// \\.\PhysicalDrive1, whose size Stat does not report.
func statSize(f *os.File) (size int64, block bool, err error) {
	if !strings.HasPrefix(f.Name(), `\\.\`) {
		fi, err := f.Stat()
		if err != nil {
			return 0, false, err
		}
		return fi.Size(), false, nil
	}
	var length int64
	var returned uint32
	err = windows.DeviceIoControl(windows.Handle(f.Fd()), ioctlDiskGetLengthInfo, nil, 0,
		(*byte)(unsafe.Pointer(&length)), uint32(unsafe.Sizeof(length)), &returned, nil)
	if err != nil {
		return 0, true, &os.PathError{Op: "IOCTL_DISK_GET_LENGTH_INFO", Path: f.Name(), Err: err}
	}
	return length, true, nil
}
