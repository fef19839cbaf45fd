package apply

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/ferrydr/ferry/protocol"
)

// Sentinels callers branch on. Each wraps the protocol sentinel of its wire
// code, so protocol.AsError sends the right code and errors.Is matches both.
var (
	// ErrInvalid: a bad name, path, header, frame or block.
	ErrInvalid = fmt.Errorf("apply: %w", protocol.ErrInvalid)
	// ErrNotFound: the disk set does not exist.
	ErrNotFound = fmt.Errorf("apply: disk set %w", protocol.ErrNotFound)
	// ErrExists: the destination of a clone, promote or demote exists.
	ErrExists = fmt.Errorf("apply: disk set %w", protocol.ErrExists)
	// ErrRefused: the set does not hold what the request assumes (a move
	// from another point, a clone of a set between points).
	ErrRefused = fmt.Errorf("apply: %w", protocol.ErrFailedPrecondition)
	// ErrHashMismatch: a block's content does not match its hash; it was
	// not written.
	ErrHashMismatch = fmt.Errorf("apply: block hash mismatch: %w", protocol.ErrInvalid)
	// ErrBusy: another operation holds the machine and the caller gave up
	// waiting.
	ErrBusy = fmt.Errorf("apply: %w", protocol.ErrBusy)
	// ErrCorrupt: a state file cannot be read or breaks the rules.
	ErrCorrupt = fmt.Errorf("apply: corrupt disk set: %w", protocol.ErrInternal)
	// ErrClosed: the DiskSet was closed.
	ErrClosed = fmt.Errorf("apply: disk set closed: %w", protocol.ErrInternal)
)

// PathError is a failed operation on a file or directory of a disk set.
type PathError struct {
	Op   string // "create", "write", "punch", "fsync", "rename", …
	Path string
	Err  error
}

func (e *PathError) Error() string { return "apply: " + e.Op + " " + e.Path + ": " + e.Err.Error() }

func (e *PathError) Unwrap() error { return e.Err }

// Retryable reports whether the operation may succeed if tried again.
func (e *PathError) Retryable() bool { return protocol.Retryable(e.Err) }

func pathErr(op, path string, err error) error {
	if err == nil {
		return nil
	}
	// The os package's own PathError would repeat the op and the path.
	if pe, ok := errors.AsType[*fs.PathError](err); ok && pe.Path == path {
		err = pe.Err
	}
	return &PathError{Op: op, Path: path, Err: err}
}
