//go:build !linux

package installer

// binaryProcesses is Linux's /proc scan; elsewhere the service manager's
// stop is trusted (the SCM waits for the service process to end).
func binaryProcesses(string) []int { return nil }

func killBinaryProcesses(string) []int { return nil }
