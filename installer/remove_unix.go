//go:build !windows

package installer

import "os"

// removeFile removes a file of the installation.
func removeFile(path string) error { return os.Remove(path) }
