package rpc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/frame"
)

// Frame types on control and enrol streams (type 0 is frame's error frame).
const (
	FrameRequest  = 1
	FrameResponse = 2
)

// Limits.
const (
	MaxBody      = 4 << 20 // bytes of a request or response body
	MaxMethodLen = 128
	// MaxFrame is the payload limit of a control stream's frames: a full
	// body plus the envelope around it.
	MaxFrame = MaxBody + 64<<10
	// MaxEnrolFrame is the payload limit of an enrol stream's frames: the
	// streams of a session without a certificate, whose requests carry a
	// token, names and a public key of a few hundred bytes.
	MaxEnrolFrame = 16 << 10
)

// Request is the first and only frame a caller sends. Body is the JSON of
// the method's argument, absent when it has none.
type Request struct {
	ID     uint64          `json:"id"`
	Method string          `json:"method"`
	Body   json.RawMessage `json:"body,omitempty"`
}

// Response answers a request: Error, or Body (absent when the method
// returns nothing). ID repeats the request's.
type Response struct {
	ID    uint64          `json:"id"`
	Error *protocol.Error `json:"error,omitempty"`
	Body  json.RawMessage `json:"body,omitempty"`
}

// EnvelopeError says that a request or response is malformed or over a
// limit; it matches protocol.ErrInvalid or protocol.ErrTooLarge.
type EnvelopeError struct {
	What   string // "request" or "response"
	Reason string
	tooBig bool
}

func (e *EnvelopeError) Error() string { return "rpc: malformed " + e.What + ": " + e.Reason }

func (e *EnvelopeError) Unwrap() error {
	if e.tooBig {
		return protocol.ErrTooLarge
	}
	return protocol.ErrInvalid
}

func hasBody(b json.RawMessage) bool { return len(b) > 0 && !bytes.Equal(b, []byte("null")) }

// ValidMethod reports whether m can name a method: 1 to MaxMethodLen
// bytes of [A-Za-z0-9._/-].
func ValidMethod(m string) bool {
	if len(m) == 0 || len(m) > MaxMethodLen {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '/' || c == '-') {
			return false
		}
	}
	return true
}

// Validate checks the method name and the body size.
func (r *Request) Validate() error {
	if !ValidMethod(r.Method) {
		return &EnvelopeError{What: "request", Reason: fmt.Sprintf("method %q: want 1 to %d bytes of [A-Za-z0-9._/-]", r.Method, MaxMethodLen)}
	}
	if len(r.Body) > MaxBody {
		return &EnvelopeError{What: "request", Reason: fmt.Sprintf("body of %d bytes over %d", len(r.Body), MaxBody), tooBig: true}
	}
	return nil
}

// Decode parses a request frame's payload. Unknown fields are ignored, so
// later versions may add some.
func (r *Request) Decode(payload []byte) error {
	*r = Request{}
	if len(payload) > MaxFrame {
		return &EnvelopeError{What: "request", Reason: fmt.Sprintf("%d bytes over %d", len(payload), MaxFrame), tooBig: true}
	}
	if err := json.Unmarshal(payload, r); err != nil {
		return &EnvelopeError{What: "request", Reason: err.Error()}
	}
	if !hasBody(r.Body) {
		r.Body = nil
	}
	return r.Validate()
}

// Validate checks the error's form and the body size, and that a response
// does not carry both.
func (r *Response) Validate() error {
	if r.Error != nil {
		if !r.Error.Code.Valid() {
			return &EnvelopeError{What: "response", Reason: fmt.Sprintf("error code %q", r.Error.Code)}
		}
		if len(r.Error.Message) > protocol.MaxMessageLen {
			return &EnvelopeError{What: "response", Reason: "error message over the limit", tooBig: true}
		}
		if hasBody(r.Body) {
			return &EnvelopeError{What: "response", Reason: "both an error and a body"}
		}
	}
	if len(r.Body) > MaxBody {
		return &EnvelopeError{What: "response", Reason: fmt.Sprintf("body of %d bytes over %d", len(r.Body), MaxBody), tooBig: true}
	}
	return nil
}

// Decode parses a response frame's payload.
func (r *Response) Decode(payload []byte) error {
	*r = Response{}
	if len(payload) > MaxFrame {
		return &EnvelopeError{What: "response", Reason: fmt.Sprintf("%d bytes over %d", len(payload), MaxFrame), tooBig: true}
	}
	if err := json.Unmarshal(payload, r); err != nil {
		return &EnvelopeError{What: "response", Reason: err.Error()}
	}
	if !hasBody(r.Body) {
		r.Body = nil
	}
	return r.Validate()
}

// encodeBody marshals a call's argument or result; nil is no body.
func encodeBody(v any) (json.RawMessage, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		if !json.Valid(v) {
			return nil, protocol.Errorf(protocol.CodeInvalid, "body is not valid JSON")
		}
		return v, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, protocol.Errorf(protocol.CodeInvalid, "encode body: %w", err)
	}
	if len(b) > MaxBody {
		return nil, protocol.Errorf(protocol.CodeTooLarge, "body of %d bytes over %d", len(b), MaxBody)
	}
	return b, nil
}

// writeFrame sends one frame with a single write.
func writeFrame(w interface{ Write([]byte) (int, error) }, typ uint8, v any) error {
	payload, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("rpc: encode envelope: %w", err)
	}
	_, err = w.Write(frame.Append(make([]byte, 0, frame.HeaderLen+len(payload)), typ, payload))
	return err
}

// Decode parses a body into a T. Unknown fields are ignored (a newer peer
// may send more); trailing data, a body over MaxBody and type mismatches
// are errors with code invalid or too_large. An empty or null body gives
// T's zero value.
func Decode[T any](body json.RawMessage) (T, error) {
	var v T
	if len(body) > MaxBody {
		return v, protocol.Errorf(protocol.CodeTooLarge, "body of %d bytes over %d", len(body), MaxBody)
	}
	if !hasBody(body) {
		return v, nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&v); err != nil {
		return v, protocol.Errorf(protocol.CodeInvalid, "body: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return v, protocol.Errorf(protocol.CodeInvalid, "body: data after the JSON value")
	}
	return v, nil
}
