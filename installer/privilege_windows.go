//go:build windows

package installer

import (
	"os"

	"golang.org/x/sys/windows"
)

func requirePrivilege() error {
	if !windows.GetCurrentProcessToken().IsElevated() {
		return ErrNotPrivileged
	}
	return nil
}

// replaceFile renames over dst. A running executable cannot be replaced
// on Windows, but it can be renamed: move it aside first.
func replaceFile(src, dst string) error {
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	old := dst + ".old"
	os.Remove(old)
	if err := os.Rename(dst, old); err != nil && !os.IsNotExist(err) {
		return err
	}
	return os.Rename(src, dst)
}

// stopSignal: Windows has no signal for another process but Kill; the
// supervisor closes the agent's stdin, which the agent takes as "stop".
func stopSignal() os.Signal { return nil }
