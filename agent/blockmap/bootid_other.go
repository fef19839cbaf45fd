//go:build !linux

package blockmap

// BootID returns "" where the platform offers no boot identifier: a map
// interrupted mid-cycle is then always resynced (safe, costs a disk read).
func BootID() string { return "" }
