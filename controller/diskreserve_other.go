//go:build !linux

package controller

import "errors"

// freeSpace is not implemented here: the reserve is off.
func freeSpace(string) (avail, total int64, err error) { return 0, 0, errors.ErrUnsupported }
