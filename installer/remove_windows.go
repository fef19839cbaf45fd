//go:build windows

package installer

import (
	"errors"
	"os"

	"golang.org/x/sys/windows"
)

// removeFile removes a file of the installation. A running executable (the
// uninstall itself may run from the installed binary) cannot be deleted on
// Windows: it is deleted at the next reboot instead.
func removeFile(path string) error {
	err := os.Remove(path)
	if err == nil || errors.Is(err, os.ErrNotExist) {
		return err
	}
	p, perr := windows.UTF16PtrFromString(path)
	if perr != nil {
		return err
	}
	if merr := windows.MoveFileEx(p, nil, windows.MOVEFILE_DELAY_UNTIL_REBOOT); merr != nil {
		return err
	}
	return nil
}
