package fsutil

import (
	"errors"
	"runtime"
)

func isUnsupported(err error) bool {
	var pe interface{ Unwrap() error }
	if errors.As(err, &pe) && runtime.GOOS == "windows" {
		return true
	}
	return false
}
