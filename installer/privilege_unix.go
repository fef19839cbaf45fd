//go:build !windows

package installer

import (
	"os"
	"syscall"
)

func requirePrivilege() error {
	if os.Geteuid() != 0 {
		return ErrNotPrivileged
	}
	return nil
}

// replaceFile renames over dst (atomic on POSIX, even if dst is running).
func replaceFile(src, dst string) error { return os.Rename(src, dst) }

// stopSignal asks a child to stop, besides closing its stdin.
func stopSignal() os.Signal { return syscall.SIGTERM }
