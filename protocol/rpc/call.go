package rpc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/session"
)

// CallError is a call that failed on this side or on the way: the stream
// could not be opened, the session ended, the context ended, or the
// response was malformed. Errors the peer returned are not CallErrors but
// the peer's *protocol.Error itself.
type CallError struct {
	Method string
	Err    error
}

func (e *CallError) Error() string { return fmt.Sprintf("rpc %s: %v", e.Method, e.Err) }

func (e *CallError) Unwrap() error { return e.Err }

// Retryable reports whether calling again may succeed (a lost session
// does; a malformed response does not).
func (e *CallError) Retryable() bool { return protocol.Retryable(e.Err) }

// Call calls method on the peer over a new control stream: req is encoded
// as JSON (nil for none) and the response body decoded into resp (a
// pointer, or nil to ignore it). An error the peer returned comes back as
// its *protocol.Error; ctx ending resets the stream, which cancels the
// handler's context on the peer.
func Call(ctx context.Context, s *session.Session, method string, req, resp any) error {
	return CallKind(ctx, s, protocol.KindControl, method, req, resp)
}

// CallKind is Call over a stream of kind k (KindEnrol before the agent has
// a certificate).
func CallKind(ctx context.Context, s *session.Session, k protocol.StreamKind, method string, req, resp any) error {
	body, err := encodeBody(req)
	if err != nil {
		return &CallError{Method: method, Err: err}
	}
	r := Request{ID: rand.Uint64(), Method: method, Body: body}
	if err := r.Validate(); err != nil {
		return &CallError{Method: method, Err: err}
	}
	st, err := s.Open(ctx, k)
	if err != nil {
		return &CallError{Method: method, Err: err}
	}
	defer st.Close()
	// The context's end wakes blocked reads and writes; the code below
	// then resets the stream, never concurrently with a write.
	stop := context.AfterFunc(ctx, func() { _ = st.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	out, err := roundTrip(st, &r)
	if err != nil {
		if ctx.Err() != nil {
			st.Reset(context.Cause(ctx))
			return &CallError{Method: method, Err: context.Cause(ctx)}
		}
		if pe, ok := errors.AsType[*protocol.Error](err); ok {
			return pe // the peer refused the stream (unauthorized, unknown kind, busy)
		}
		return &CallError{Method: method, Err: err}
	}
	if out.Error != nil {
		return out.Error
	}
	if resp != nil && out.Body != nil {
		if err := decodeInto(out.Body, resp); err != nil {
			return &CallError{Method: method, Err: err}
		}
	}
	return nil
}

func roundTrip(st *session.Stream, r *Request) (*Response, error) {
	if err := writeFrame(st, FrameRequest, r); err != nil {
		return nil, err
	}
	typ, payload, err := frame.NewReader(st, MaxFrame).Next()
	if err != nil {
		return nil, err
	}
	if typ != FrameResponse {
		return nil, &EnvelopeError{What: "response", Reason: fmt.Sprintf("frame type %d, want %d", typ, FrameResponse)}
	}
	var out Response
	if err := out.Decode(payload); err != nil {
		return nil, err
	}
	if out.ID != r.ID {
		return nil, &EnvelopeError{What: "response", Reason: fmt.Sprintf("id %d answers request %d", out.ID, r.ID)}
	}
	return &out, nil
}
