package storage

import (
	"errors"
	"fmt"
)

// Sentinels callers branch on. Each error returned by the repository wraps
// at most one of them.
var (
	ErrNotFound     = errors.New("storage: not found")
	ErrCorrupt      = errors.New("storage: corrupt data")
	ErrKeyRequired  = errors.New("storage: private key required to read an encrypted repository")
	ErrWrongKey     = errors.New("storage: private key does not match the repository")
	ErrChunkMissing = errors.New("storage: chunk not stored")
	ErrHashMismatch = errors.New("storage: content does not match its hash")
	ErrLocked       = errors.New("storage: repository is open in another process")
	ErrClosed       = errors.New("storage: repository closed")
	ErrNotRepo      = errors.New("storage: not a repository")
	ErrExists       = errors.New("storage: repository already exists")
)

// CorruptError says which stored bytes failed a check. It wraps ErrCorrupt.
type CorruptError struct {
	Pack   string // pack id (16 hex digits), empty if not in a pack
	Offset int64
	Hash   Hash // chunk hash, zero if the damage is not in a chunk
	Reason string
	Err    error // underlying cause, may be nil
}

func (e *CorruptError) Error() string {
	s := fmt.Sprintf("storage: corrupt data in pack %s at offset %d", e.Pack, e.Offset)
	if e.Hash != (Hash{}) {
		s += " (chunk " + e.Hash.String() + ")"
	}
	s += ": " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

func (e *CorruptError) Unwrap() error { return e.Err }

// FormatVersionError is returned when a repository's format version is not
// one this build can read.
type FormatVersionError struct {
	Path     string
	Found    int
	Min, Max int
	Subject  string // "repository", "index" or "pack"
}

func (e *FormatVersionError) Error() string {
	return fmt.Sprintf("storage: %s %s has format version %d; this build reads versions %d to %d",
		e.Subject, e.Path, e.Found, e.Min, e.Max)
}

// OpError adds the operation and path to an I/O failure.
type OpError struct {
	Op   string
	Path string
	Err  error
}

func (e *OpError) Error() string { return "storage: " + e.Op + " " + e.Path + ": " + e.Err.Error() }
func (e *OpError) Unwrap() error { return e.Err }

func opErr(op, path string, err error) error {
	if err == nil {
		return nil
	}
	return &OpError{Op: op, Path: path, Err: err}
}
