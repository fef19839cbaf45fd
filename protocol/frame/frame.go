package frame

import (
	"fmt"

	"github.com/ferrydr/ferry/protocol"
)

const (
	// MaxFrameDefault is the payload limit of a Reader given max ≤ 0.
	MaxFrameDefault = 16 << 20
	// HeaderLen is the length prefix plus the type byte.
	HeaderLen = 5
	// TypeError is the error frame, reserved in every stream kind.
	TypeError uint8 = 0
	// MaxErrorPayload bounds an error frame's JSON payload: room for a
	// message of protocol.MaxMessageLen bytes even if every byte is
	// escaped as \u00XX.
	MaxErrorPayload = 32 << 10
	// maxWire is the largest payload the u32 length can describe.
	maxWire = 1<<32 - 2
)

// ErrTooLarge is protocol.ErrTooLarge, for errors.Is on frame limits.
var ErrTooLarge = protocol.ErrTooLarge

// SizeError says that a frame's payload is over the limit. It matches
// ErrTooLarge.
type SizeError struct {
	Len, Max int64
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("frame: payload of %d bytes over the limit of %d", e.Len, e.Max)
}

func (e *SizeError) Unwrap() error { return protocol.ErrTooLarge }

// FormatError says that the bytes are not a frame. It matches
// protocol.ErrInvalid.
type FormatError struct {
	Reason string
}

func (e *FormatError) Error() string { return "frame: " + e.Reason }

func (e *FormatError) Unwrap() error { return protocol.ErrInvalid }
