package disk

import (
	"errors"
	"fmt"
)

// Sentinels that callers branch on. A *FormatError wraps one of them.
var (
	// ErrUnsupported: a valid image that uses a feature this package does
	// not read (encryption, an unknown extent type, ...).
	ErrUnsupported = errors.New("unsupported image")
	// ErrCorrupt: the image's metadata is inconsistent or truncated.
	ErrCorrupt = errors.New("corrupt image")
	// ErrDirty: the image was not closed cleanly and its metadata cannot
	// be trusted until its owner repairs it.
	ErrDirty = errors.New("dirty image")
)

// FormatError says what is wrong with an image.
type FormatError struct {
	Format Format
	Path   string
	Reason string
	Err    error // one of the sentinels above, or an underlying error
}

func (e *FormatError) Error() string {
	s := string(e.Format) + " " + e.Path + ": " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *FormatError) Unwrap() error { return e.Err }

// Retryable reports whether opening the same file again later may succeed:
// a dirty image becomes clean when its hypervisor closes it, a corrupt or
// unsupported one does not change by waiting.
func (e *FormatError) Retryable() bool { return errors.Is(e.Err, ErrDirty) }

func corruptf(f Format, path, format string, args ...any) error {
	return &FormatError{Format: f, Path: path, Reason: fmt.Sprintf(format, args...), Err: ErrCorrupt}
}

func unsupportedf(f Format, path, format string, args ...any) error {
	return &FormatError{Format: f, Path: path, Reason: fmt.Sprintf(format, args...), Err: ErrUnsupported}
}

func dirtyf(f Format, path, format string, args ...any) error {
	return &FormatError{Format: f, Path: path, Reason: fmt.Sprintf(format, args...), Err: ErrDirty}
}

// ioError wraps an I/O failure on a container file with the format and path.
func ioError(f Format, path, op string, err error) error {
	return &FormatError{Format: f, Path: path, Reason: op, Err: err}
}
