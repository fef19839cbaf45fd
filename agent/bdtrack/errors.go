package bdtrack

import "errors"

var (
	// ErrUnsupported: block devices cannot be tracked here (not Linux, no
	// bpf() for this process, no block tracepoints, a partition).
	ErrUnsupported = errors.New("block device tracking not supported")
	// ErrTooLarge: the device needs a bigger bitmap than the bound allows.
	ErrTooLarge = errors.New("device too large for the dirty bitmap bound")
	// ErrResized: the device's size differs from the tracker's; tracking is
	// lost and the caller must Remove, reopen and resync.
	ErrResized = errors.New("device resized: tracking lost")
	// ErrMismatch: a pinned tracker exists for the device but has another
	// format version, device or block size; it is left alone.
	ErrMismatch = errors.New("pinned tracker does not match")
	// ErrNotPinned is the FreshReason when no tracker was pinned (first
	// use, or bpffs was emptied by a reboot).
	ErrNotPinned = errors.New("no pinned tracker")
	// ErrDetached is the FreshReason when the pinned maps were found but a
	// program link was gone: writes may have been missed.
	ErrDetached = errors.New("tracker program was detached: tracking lost")
	// ErrClosed: the tracker was closed or removed.
	ErrClosed = errors.New("tracker closed")
)

// Error records the operation and device an error came from.
type Error struct {
	Op  string // "open", "cut", "remove"
	Dev string
	Err error
}

func (e *Error) Error() string { return "bdtrack " + e.Op + " " + e.Dev + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Retryable reports whether trying again can help: none of these
// conditions clears by itself.
func (e *Error) Retryable() bool { return false }
