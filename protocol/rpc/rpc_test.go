package rpc

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/frame"
)

type addReq struct {
	A, B int
}
type addResp struct {
	Sum int `json:"sum"`
}

func mathMux() *Mux {
	var m Mux
	m.Handle("math.add", func(ctx context.Context, body json.RawMessage) (any, error) {
		req, err := Decode[addReq](body)
		if err != nil {
			return nil, err
		}
		return addResp{Sum: req.A + req.B}, nil
	})
	m.Handle("machines.get", func(ctx context.Context, body json.RawMessage) (any, error) {
		name, err := Decode[string](body)
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("machine %q: %w", name, protocol.ErrNotFound)
	})
	m.Handle("nothing", func(ctx context.Context, body json.RawMessage) (any, error) { return nil, nil })
	m.Handle("panics", func(ctx context.Context, body json.RawMessage) (any, error) { panic("boom") })
	m.Handle("big", func(ctx context.Context, body json.RawMessage) (any, error) {
		return strings.Repeat("x", MaxBody), nil
	})
	return &m
}

func TestCallBothWays(t *testing.T) {
	agent, ctrl := sessions(t, true, nil)
	serve(ctrl, mathMux().Serve)
	serve(agent, mathMux().Serve)

	var out addResp
	require.NoError(t, Call(t.Context(), agent, "math.add", addReq{A: 2, B: 40}, &out))
	require.Equal(t, 42, out.Sum)

	// The controller calls the agent over the agent's own session.
	out = addResp{}
	require.NoError(t, Call(t.Context(), ctrl, "math.add", addReq{A: -1, B: 1}, &out))
	require.Equal(t, 0, out.Sum)

	require.NoError(t, Call(t.Context(), agent, "nothing", nil, nil))
	require.NoError(t, Call(t.Context(), agent, "math.add", json.RawMessage(`{"A":1,"B":1,"Extra":true}`), &out),
		"unknown fields are ignored: a newer peer may send more")
	require.Equal(t, 2, out.Sum)
}

func TestPeerErrorsMapToSentinels(t *testing.T) {
	agent, ctrl := sessions(t, true, nil)
	serve(ctrl, mathMux().Serve)

	err := Call(t.Context(), agent, "machines.get", "db1", nil)
	require.ErrorIs(t, err, protocol.ErrNotFound)
	var pe *protocol.Error
	require.ErrorAs(t, err, &pe)
	require.Equal(t, protocol.CodeNotFound, pe.Code)
	require.Equal(t, `machine "db1": not found`, pe.Message)

	err = Call(t.Context(), agent, "no.such.method", nil, nil)
	require.ErrorIs(t, err, protocol.ErrNotFound)
	require.Contains(t, err.Error(), `unknown method "no.such.method"`)

	err = Call(t.Context(), agent, "math.add", "not an object", nil)
	require.ErrorIs(t, err, protocol.ErrInvalid)

	err = Call(t.Context(), agent, "panics", nil, nil)
	require.ErrorIs(t, err, protocol.ErrInternal)
	require.Contains(t, err.Error(), "panic: boom")

	err = Call(t.Context(), agent, "big", nil, nil)
	require.ErrorIs(t, err, protocol.ErrTooLarge, "a result over the body limit")

	err = Call(t.Context(), agent, "math.add", strings.Repeat("x", MaxBody), nil)
	require.ErrorIs(t, err, protocol.ErrTooLarge, "refused before sending")
	var ce *CallError
	require.ErrorAs(t, err, &ce)

	err = Call(t.Context(), agent, "bad method!", nil, nil)
	require.ErrorIs(t, err, protocol.ErrInvalid)
}

func TestCancelAbortsCallAndHandler(t *testing.T) {
	agent, ctrl := sessions(t, true, nil)
	started := make(chan struct{})
	handlerErr := make(chan error, 1)
	var m Mux
	m.Handle("cycle.now", func(ctx context.Context, body json.RawMessage) (any, error) {
		close(started)
		<-ctx.Done()
		handlerErr <- context.Cause(ctx)
		return nil, ctx.Err()
	})
	serve(ctrl, m.Serve)

	ctx, cancel := context.WithCancel(t.Context())
	callErr := make(chan error, 1)
	go func() { callErr <- Call(ctx, agent, "cycle.now", nil, nil) }()
	<-started
	cancel()
	select {
	case err := <-callErr:
		require.ErrorIs(t, err, context.Canceled)
		require.False(t, protocol.Retryable(err))
	case <-time.After(10 * time.Second):
		t.Fatal("Call did not return after cancel")
	}
	select {
	case cause := <-handlerErr:
		require.ErrorIs(t, cause, protocol.ErrCancelled, "the reset's error frame reached the handler: %v", cause)
	case <-time.After(10 * time.Second):
		t.Fatal("the handler's context was not cancelled")
	}
	require.NoError(t, agent.Err(), "cancelling a call leaves the session up")
}

func TestSessionLostDuringCall(t *testing.T) {
	agent, ctrl := sessions(t, true, nil)
	started := make(chan struct{})
	var m Mux
	m.Handle("slow", func(ctx context.Context, body json.RawMessage) (any, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	serve(ctrl, m.Serve)
	callErr := make(chan error, 1)
	go func() { callErr <- Call(context.Background(), agent, "slow", nil, nil) }()
	<-started
	require.NoError(t, ctrl.Close())
	select {
	case err := <-callErr:
		var ce *CallError
		require.ErrorAs(t, err, &ce)
		require.ErrorIs(t, err, protocol.ErrUnavailable)
		require.True(t, protocol.Retryable(err), "dial again and retry: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Call did not return after the session ended")
	}
}

func TestEnrolWithoutCertificate(t *testing.T) {
	gate := func(k protocol.StreamKind, peer []*x509.Certificate) error {
		if len(peer) == 0 && k != protocol.KindEnrol {
			return protocol.Errorf(protocol.CodeUnauthorized, "%s needs a client certificate", k)
		}
		return nil
	}
	agent, ctrl := sessions(t, false, gate)
	var m Mux
	m.Handle("enrol", func(ctx context.Context, body json.RawMessage) (any, error) { return "certificate", nil })
	serve(ctrl, m.Serve)

	var cert string
	require.NoError(t, CallKind(t.Context(), agent, protocol.KindEnrol, "enrol", nil, &cert))
	require.Equal(t, "certificate", cert)

	err := Call(t.Context(), agent, "enrol", nil, &cert)
	require.ErrorIs(t, err, protocol.ErrUnauthorized)
	var pe *protocol.Error
	require.ErrorAs(t, err, &pe)
	require.Equal(t, "control needs a client certificate", pe.Message)
}

func TestServeStreamMalformedRequest(t *testing.T) {
	agent, ctrl := sessions(t, true, nil)
	serveErr := make(chan error, 1)
	go func() {
		st, err := ctrl.Accept(context.Background())
		if err != nil {
			serveErr <- err
			return
		}
		serveErr <- ServeStream(context.Background(), st, mathMux().Serve)
	}()
	st, err := agent.Open(t.Context(), protocol.KindControl)
	require.NoError(t, err)
	_, err = st.Write(frame.Append(nil, FrameRequest, []byte(`{"id":7,"method":""}`)))
	require.NoError(t, err)
	typ, payload, err := frame.NewReader(st, MaxFrame).Next()
	require.NoError(t, err)
	require.Equal(t, uint8(FrameResponse), typ)
	var resp Response
	require.NoError(t, resp.Decode(payload))
	require.Equal(t, uint64(7), resp.ID)
	require.ErrorIs(t, resp.Error, protocol.ErrInvalid)
	require.ErrorIs(t, <-serveErr, protocol.ErrInvalid)
}

func TestDecode(t *testing.T) {
	v, err := Decode[addReq](json.RawMessage(`{"A":1,"B":2,"C":3}`))
	require.NoError(t, err)
	require.Equal(t, addReq{A: 1, B: 2}, v)
	v, err = Decode[addReq](nil)
	require.NoError(t, err)
	require.Equal(t, addReq{}, v)
	_, err = Decode[addReq](json.RawMessage(`null`))
	require.NoError(t, err)
	for _, bad := range []string{`{"A":1} {"A":2}`, `{"A":"x"}`, `{"A":1}]`, `[`} {
		_, err := Decode[addReq](json.RawMessage(bad))
		require.ErrorIs(t, err, protocol.ErrInvalid, bad)
	}
	_, err = Decode[string](json.RawMessage(`"` + strings.Repeat("x", MaxBody) + `"`))
	require.ErrorIs(t, err, protocol.ErrTooLarge)
}

func TestMuxRegistration(t *testing.T) {
	var m Mux
	fn := func(context.Context, json.RawMessage) (any, error) { return nil, nil }
	m.Handle("a.b", fn)
	require.Panics(t, func() { m.Handle("a.b", fn) })
	require.Panics(t, func() { m.Handle("has space", fn) })
	_, err := m.Serve(t.Context(), "x", nil)
	require.True(t, errors.Is(err, protocol.ErrNotFound))
}

func TestEnvelopeValidation(t *testing.T) {
	var r Response
	require.ErrorIs(t, r.Decode([]byte(`{"id":1,"error":{"code":"busy","message":"x"},"body":{"a":1}}`)), protocol.ErrInvalid)
	require.ErrorIs(t, r.Decode([]byte(`{"id":1,"error":{"code":"","message":"x"}}`)), protocol.ErrInvalid)
	require.NoError(t, r.Decode([]byte(`{"id":1,"error":{"code":"busy","message":"x"},"body":null}`)))
	require.ErrorIs(t, r.Error, protocol.ErrBusy)
	var q Request
	require.ErrorIs(t, q.Decode([]byte(`{"id":1,"method":"a","body":`+`"`+strings.Repeat("x", MaxBody)+`"}`)), protocol.ErrTooLarge)
	require.ErrorIs(t, q.Decode([]byte(`{"id":-1,"method":"a"}`)), protocol.ErrInvalid)
	require.NoError(t, q.Decode([]byte(`{"id":18446744073709551615,"method":"cycle.begin","body":{"x":[1,2]},"future":1}`)))
	require.Equal(t, uint64(18446744073709551615), q.ID)
}

// The v1 envelope, byte for byte: a change is a wire format change.
func TestEnvelopeV1Bytes(t *testing.T) {
	var buf strings.Builder
	require.NoError(t, writeFrame(&buf, FrameRequest, &Request{ID: 7, Method: "cycle.begin", Body: json.RawMessage(`{"machine":"db1"}`)}))
	require.Equal(t, "\x00\x00\x00\x39\x01"+`{"id":7,"method":"cycle.begin","body":{"machine":"db1"}}`, buf.String())
	buf.Reset()
	require.NoError(t, writeFrame(&buf, FrameResponse, &Response{ID: 7, Error: protocol.Errorf(protocol.CodeNotFound, "no machine db1")}))
	require.Equal(t, "\x00\x00\x00\x41\x02"+`{"id":7,"error":{"code":"not_found","message":"no machine db1"}}`, buf.String())
	buf.Reset()
	require.NoError(t, writeFrame(&buf, FrameResponse, &Response{ID: 7}))
	require.Equal(t, "\x00\x00\x00\x09\x02"+`{"id":7}`, buf.String())
}
