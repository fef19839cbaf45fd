//go:build !linux && !windows

package disk

import (
	"io"
	"os"
)

// statSize returns the size of a regular file, or of a device by seeking
// to its end.
func statSize(f *os.File) (size int64, block bool, err error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		return fi.Size(), false, nil
	}
	end, err := f.Seek(0, io.SeekEnd)
	return end, true, err
}
