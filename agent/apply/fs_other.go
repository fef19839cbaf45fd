//go:build !linux

package apply

import "os"

// punchHole is not available here: zero blocks are written as zeros.
func punchHole(*os.File, int64, int64) error { return errPunchUnsupported }

// startWriteback has no portable equivalent; the final fsync does it all.
func startWriteback(*os.File) error { return nil }

// dataExtents without SEEK_DATA: everything may hold data (the copy still
// skips all-zero chunks).
func dataExtents(_ *os.File, size int64) ([]extent, error) { return []extent{{0, size}}, nil }
