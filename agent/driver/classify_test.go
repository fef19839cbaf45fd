package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
)

// TestClassifyAndConnKind: Classify keeps nil and already classified
// errors and otherwise asks the driver's kindOf; ConnKind classifies real
// transport failures (a refused dial on loopback, a dial past its deadline,
// a cancelled context, an EOF) and leaves anything else to the driver.
func TestClassifyAndConnKind(t *testing.T) {
	require.Nil(t, Classify("x", "start", nil, func(error) ErrorKind { panic("not called") }))
	inner := &Error{Driver: "x", Op: "stop", Kind: KindAuth, Err: errors.New("denied")}
	wrapped := fmt.Errorf("wrapped: %w", inner)
	require.Equal(t, wrapped, Classify("x", "start", wrapped, func(error) ErrorKind { panic("not called") }), "kept as it is")
	err := Classify("x", "start", errors.New("boom"), func(error) ErrorKind { return KindNotFound })
	var de *Error
	require.ErrorAs(t, err, &de)
	require.Equal(t, Error{Driver: "x", Op: "start", Kind: KindNotFound, Err: de.Err}, *de)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	_, refused := net.Dial("tcp", addr)
	require.Error(t, refused, "precondition: nothing listens on %s", addr)

	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	var d net.Dialer
	_, late := d.DialContext(ctx, "tcp", addr)
	require.Error(t, late)
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()

	for _, tc := range []struct {
		name string
		err  error
		kind ErrorKind
		ok   bool
	}{
		{"connection refused", fmt.Errorf("connect: %w", refused), KindTransient, true},
		{"dial past its deadline", late, KindTimeout, true},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), KindTimeout, true},
		{"cancelled", fmt.Errorf("x: %w", cctx.Err()), KindUnknown, true},
		{"EOF", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), KindTransient, true},
		{"other", errors.New("bad XML"), KindUnknown, false},
	} {
		k, ok := ConnKind(tc.err)
		require.Equal(t, tc.kind, k, tc.name)
		require.Equal(t, tc.ok, ok, tc.name)
	}
}

// TestOnlyTransientIsRetried: of the classes, only transient errors are
// retried; a driver timeout, though it wraps context.DeadlineExceeded, is
// not (its Retryable decides before protocol.Retryable's deadline rule),
// and its message names the bound.
func TestOnlyTransientIsRetried(t *testing.T) {
	for k := range kindNames {
		e := &Error{Driver: "x", Op: "stop", Kind: k, Err: errors.New("boom")}
		require.Equal(t, k == KindTransient, e.Retryable(), "%s", k)
		require.Equal(t, k == KindTransient, protocol.Retryable(fmt.Errorf("step: %w", e)), "%s through protocol.Retryable", k)
	}
	timeout := &Error{Driver: "vsphere", Op: "stop", Kind: KindTimeout,
		Err: fmt.Errorf("power off app: no result after 10m0s: %w", context.DeadlineExceeded)}
	require.ErrorIs(t, timeout, context.DeadlineExceeded)
	require.True(t, protocol.Retryable(context.DeadlineExceeded), "precondition: a bare deadline is retried")
	require.False(t, protocol.Retryable(timeout))
	require.Contains(t, timeout.Error(), "timeout")
	require.Contains(t, timeout.Error(), "10m0s")
}
