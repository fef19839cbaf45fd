//go:build !linux

package snapshot

import "fmt"

// stampFile is Linux-only for now (statx).
func stampFile(path string) (fileStamp, fsKey, error) {
	return fileStamp{}, fsKey{}, fmt.Errorf("file timestamps that tell every write apart: %w", ErrNotSupported)
}

// probeTimestamps is Linux-only for now.
func probeTimestamps(dir string, key fsKey) (bool, string, error) {
	return false, "", fmt.Errorf("file timestamps that tell every write apart: %w", ErrNotSupported)
}
