package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/session"
)

// Handler answers one call: the result is encoded as the response body
// (nil for none); an error travels as {code, message} via protocol.AsError.
type Handler func(ctx context.Context, method string, body json.RawMessage) (any, error)

// ServeStream serves the one call on st: it reads the request, runs h with
// a context that ends when ctx does or the caller gives up (resets the
// stream or loses the session), writes the response and closes st. A
// handler's error is the caller's, not ServeStream's: it returns only
// transport and protocol failures.
func ServeStream(ctx context.Context, st *session.Stream, h Handler) error {
	return ServeStreamLimit(ctx, st, h, MaxFrame)
}

// ServeStreamLimit is ServeStream with frames limited to maxFrame payload
// bytes (MaxEnrolFrame on enrol streams). A request over the limit is
// answered with an error frame of code too_large before anything more of
// it is read.
func ServeStreamLimit(ctx context.Context, st *session.Stream, h Handler, maxFrame int) error {
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { _ = st.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	fr := frame.NewReader(st, maxFrame)
	typ, payload, err := fr.Next()
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if errors.Is(err, frame.ErrTooLarge) {
			st.Reset(err)
		}
		return fmt.Errorf("rpc: read request: %w", err)
	}
	if typ != FrameRequest {
		err := &EnvelopeError{What: "request", Reason: fmt.Sprintf("frame type %d, want %d", typ, FrameRequest)}
		st.Reset(err)
		return err
	}
	var req Request
	if err := req.Decode(payload); err != nil {
		// Answer in kind, so the caller's error says what was wrong.
		if werr := writeFrame(st, FrameResponse, &Response{ID: req.ID, Error: protocol.AsError(err)}); werr != nil {
			return fmt.Errorf("rpc: write response: %w", werr)
		}
		return err
	}

	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var watch sync.WaitGroup
	// The caller sends nothing after its request but, when it gives up, an
	// error frame; a dead session fails the read. Either cancels the
	// handler. The watcher ends when st closes below.
	watch.Go(func() {
		if _, _, err := fr.Next(); err != nil && !errors.Is(err, io.EOF) {
			cancel(fmt.Errorf("rpc %s: caller gone: %w", req.Method, err))
		}
	})
	resp := call(hctx, h, &req)
	werr := writeFrame(st, FrameResponse, resp)
	_ = st.Close()
	watch.Wait()
	if werr != nil {
		return fmt.Errorf("rpc: write response to %s: %w", req.Method, werr)
	}
	return nil
}

// call runs the handler and builds the response; a panic becomes an
// internal error rather than the end of the process.
func call(ctx context.Context, h Handler, req *Request) (resp *Response) {
	resp = &Response{ID: req.ID}
	defer func() {
		if p := recover(); p != nil {
			resp.Body = nil
			resp.Error = protocol.Errorf(protocol.CodeInternal, "%s: panic: %v", req.Method, p)
		}
	}()
	result, err := h(ctx, req.Method, req.Body)
	if err != nil {
		resp.Error = protocol.AsError(err)
		return resp
	}
	body, err := encodeBody(result)
	if err != nil {
		resp.Error = protocol.AsError(err)
		return resp
	}
	resp.Body = body
	return resp
}

// Mux routes calls to functions by method name. The zero value is ready;
// register methods before serving. An unknown method is not_found.
type Mux struct {
	mu sync.RWMutex
	m  map[string]func(ctx context.Context, body json.RawMessage) (any, error)
}

// Handle registers fn for method. Registering a method twice, or an
// invalid name, is a programming error and panics.
func (m *Mux) Handle(method string, fn func(ctx context.Context, body json.RawMessage) (any, error)) {
	if !ValidMethod(method) {
		panic(fmt.Sprintf("rpc: invalid method name %q", method))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, dup := m.m[method]; dup {
		panic(fmt.Sprintf("rpc: method %q registered twice", method))
	}
	if m.m == nil {
		m.m = make(map[string]func(context.Context, json.RawMessage) (any, error))
	}
	m.m[method] = fn
}

// Serve is the Mux as a Handler: pass m.Serve to ServeStream.
func (m *Mux) Serve(ctx context.Context, method string, body json.RawMessage) (any, error) {
	m.mu.RLock()
	fn := m.m[method]
	m.mu.RUnlock()
	if fn == nil {
		return nil, protocol.Errorf(protocol.CodeNotFound, "unknown method %q", method)
	}
	return fn(ctx, body)
}

var _ Handler = (*Mux)(nil).Serve

// decodeInto decodes a response body into the caller's value.
func decodeInto(body json.RawMessage, out any) error {
	if err := json.Unmarshal(body, out); err != nil {
		return protocol.Errorf(protocol.CodeInvalid, "response body: %w", err)
	}
	return nil
}
