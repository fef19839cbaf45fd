package snapshot

import "errors"

// ErrNotSupported means the filesystem or platform lacks a mechanism; the
// caller falls back to the next one.
var ErrNotSupported = errors.New("not supported here")

// Range is a byte range of a file.
type Range struct {
	Offset, Length int64
}

// PhysExtent is one FIEMAP extent.
type PhysExtent struct {
	Logical, Physical, Length int64
	Flags                     uint32
}
