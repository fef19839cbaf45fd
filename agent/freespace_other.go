//go:build !linux

package agent

// freeBytes is not measured on this platform (0: unknown).
func freeBytes(string) int64 { return 0 }
