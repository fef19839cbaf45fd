package protocol

import (
	"context"
	"errors"
	"fmt"
)

// Code names a class of error on the wire. Codes are append-only; a peer
// may receive a code it does not know, which matches no sentinel and is
// not retryable.
type Code string

const (
	CodeInvalid            Code = "invalid"
	CodeNotFound           Code = "not_found"
	CodeUnauthorized       Code = "unauthorized"
	CodeConflict           Code = "conflict"
	CodeUnavailable        Code = "unavailable"
	CodeVersionMismatch    Code = "version_mismatch"
	CodeTooLarge           Code = "too_large"
	CodeInternal           Code = "internal"
	CodeCancelled          Code = "cancelled"
	CodeBusy               Code = "busy"
	CodeExists             Code = "exists"
	CodeFailedPrecondition Code = "failed_precondition"
)

// Sentinels, one per code. Errors from a peer match them with errors.Is;
// local code wraps them (fmt.Errorf("machine %q: %w", name, ErrNotFound))
// so that AsError sends the right code.
var (
	ErrInvalid            = errors.New("invalid request")
	ErrNotFound           = errors.New("not found")
	ErrUnauthorized       = errors.New("unauthorized")
	ErrConflict           = errors.New("conflict")
	ErrUnavailable        = errors.New("unavailable")
	ErrVersionMismatch    = errors.New("protocol version mismatch")
	ErrTooLarge           = errors.New("too large")
	ErrInternal           = errors.New("internal error")
	ErrCancelled          = errors.New("cancelled")
	ErrBusy               = errors.New("busy")
	ErrExists             = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
)

// codeTable maps codes to sentinels and back. It is read-only.
var codeTable = [...]struct {
	code Code
	err  error
}{
	{CodeInvalid, ErrInvalid},
	{CodeNotFound, ErrNotFound},
	{CodeUnauthorized, ErrUnauthorized},
	{CodeConflict, ErrConflict},
	{CodeUnavailable, ErrUnavailable},
	{CodeVersionMismatch, ErrVersionMismatch},
	{CodeTooLarge, ErrTooLarge},
	{CodeInternal, ErrInternal},
	{CodeCancelled, ErrCancelled},
	{CodeBusy, ErrBusy},
	{CodeExists, ErrExists},
	{CodeFailedPrecondition, ErrFailedPrecondition},
}

// Sentinel returns the sentinel error of c, or nil for a code this build
// does not know.
func (c Code) Sentinel() error {
	for _, e := range codeTable {
		if e.code == c {
			return e.err
		}
	}
	return nil
}

// Retryable reports whether an error of this code may go away on its own:
// unavailable and busy.
func (c Code) Retryable() bool { return c == CodeUnavailable || c == CodeBusy }

// MaxCodeLen and MaxMessageLen bound an error on the wire (docs/protocol.md).
const (
	MaxCodeLen    = 32
	MaxMessageLen = 4096
)

// Valid reports whether c is well formed: 1–32 bytes of [a-z_],
// starting with a letter. Unknown but well-formed codes are valid.
func (c Code) Valid() bool {
	if len(c) == 0 || len(c) > MaxCodeLen || c[0] < 'a' || c[0] > 'z' {
		return false
	}
	for i := 0; i < len(c); i++ {
		if (c[i] < 'a' || c[i] > 'z') && c[i] != '_' {
			return false
		}
	}
	return true
}

// Error is an error as it travels on the wire: a code callers branch on
// and a message people read.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// Errorf builds an *Error; format and args are as in fmt.Errorf.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Errorf(format, args...).Error()}
}

func (e *Error) Error() string {
	if e.Message == "" {
		return string(e.Code)
	}
	return e.Message
}

// Is matches the sentinel of e's code, and any *Error with the same code.
func (e *Error) Is(target error) bool {
	if t, ok := target.(*Error); ok {
		return t.Code == e.Code
	}
	s := e.Code.Sentinel()
	return s != nil && s == target
}

// Retryable reports whether a retry may succeed (see Code.Retryable).
func (e *Error) Retryable() bool { return e.Code.Retryable() }

// Truncated returns e with its message cut to MaxMessageLen bytes (on a
// UTF-8 boundary) and a malformed code replaced by internal, ready to send.
func (e *Error) Truncated() *Error {
	out := *e
	if !out.Code.Valid() {
		out.Code = CodeInternal
	}
	if len(out.Message) > MaxMessageLen {
		cut := MaxMessageLen
		for cut > 0 && out.Message[cut]&0xC0 == 0x80 {
			cut--
		}
		out.Message = out.Message[:cut]
	}
	return &out
}

// AsError maps any error to its wire form. An *Error in the chain gives its
// code; a wrapped sentinel gives the sentinel's code; context.Canceled is
// cancelled and context.DeadlineExceeded unavailable; anything else is
// internal. The message is err's full text, truncated to MaxMessageLen.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	if pe, ok := err.(*Error); ok {
		return pe.Truncated()
	}
	code := CodeInternal
	if pe, ok := errors.AsType[*Error](err); ok {
		code = pe.Code
	} else if errors.Is(err, context.Canceled) {
		code = CodeCancelled
	} else if errors.Is(err, context.DeadlineExceeded) {
		code = CodeUnavailable
	} else {
		for _, e := range codeTable {
			if errors.Is(err, e.err) {
				code = e.code
				break
			}
		}
	}
	return (&Error{Code: code, Message: err.Error()}).Truncated()
}

// Retryable reports whether retrying the operation that failed with err may
// succeed: the first error in the chain with a Retryable() bool method
// decides; otherwise wrapped unavailable or busy sentinels and deadline
// expiry are retryable.
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	if r, ok := errors.AsType[interface {
		error
		Retryable() bool
	}](err); ok {
		return r.Retryable()
	}
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrBusy) || errors.Is(err, context.DeadlineExceeded)
}
