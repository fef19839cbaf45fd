//go:build linux

package apply

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// punchHole deallocates [off, off+n) of f, which then reads as zeros; the
// size does not change. errPunchUnsupported means the filesystem cannot.
func punchHole(f *os.File, off, n int64) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return errPunchUnsupported
	}
	return err
}

// startWriteback asks the kernel to begin writing f's dirty pages without
// waiting for them, so that the fsync at the end of a move finds most of
// the data already on its way.
func startWriteback(f *os.File) error {
	return unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}

// dataExtents lists the ranges of f's first size bytes that may hold data,
// with SEEK_DATA/SEEK_HOLE; a filesystem without them reports everything.
func dataExtents(f *os.File, size int64) ([]extent, error) {
	fd := int(f.Fd())
	var out []extent
	for pos := int64(0); pos < size; {
		d, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole after pos
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return []extent{{0, size}}, nil
		}
		if err != nil {
			return nil, err
		}
		if d >= size {
			break
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		if h > size || h <= d {
			h = size
		}
		out = append(out, extent{d, h - d})
		pos = h
	}
	return out, nil
}
