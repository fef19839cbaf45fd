//go:build !linux

package disk

// openDirect is Linux-only: elsewhere a block device is read through the
// operating system's cache, as it always was. (nil, nil) says it was not
// tried, which PageCacheReads does not report.
func openDirect(string) (directFile, error) { return nil, nil }
