//go:build linux

package disk

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// seekDataRanges finds the data in [off, off+n) with SEEK_DATA/SEEK_HOLE.
// A filesystem that does not support them reports everything as data.
func seekDataRanges(f *os.File, off, n int64) ([]Extent, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	end := off + n
	var out []Extent
	var opErr error
	ctlErr := rc.Control(func(fd uintptr) {
		pos := off
		for pos < end {
			d, err := unix.Seek(int(fd), pos, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) {
				return // no data after pos
			}
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				out = []Extent{{off, n}}
				return
			}
			if err != nil {
				opErr = &os.PathError{Op: "seek data", Path: f.Name(), Err: err}
				return
			}
			if d >= end {
				return
			}
			h, err := unix.Seek(int(fd), d, unix.SEEK_HOLE)
			if err != nil {
				opErr = &os.PathError{Op: "seek hole", Path: f.Name(), Err: err}
				return
			}
			if h > end {
				h = end
			}
			if h <= d { // cannot happen on a sane filesystem; avoid looping
				h = end
			}
			out = append(out, Extent{d, h - d})
			pos = h
		}
	})
	if ctlErr != nil {
		return nil, ctlErr
	}
	return out, opErr
}
