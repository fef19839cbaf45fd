//go:build !linux

package track

import "time"

// File tracks the writes to one file (Linux only).
type File struct{}

// Start fails: write tracking needs Linux tracefs.
func Start(path string) (*File, error) { return nil, ErrUnsupported }

func (f *File) Cut(timeout time.Duration) (Cut, error) { return Cut{}, ErrUnsupported }
func (f *File) Commit(point int64)                     {}
func (f *File) Close() error                           { return nil }
