package session

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/frame"
)

// Stream is one stream of a session, kind byte already sent or read. It is
// a net.Conn: Read and Write may run concurrently with each other; Close
// ends both directions and wakes blocked calls.
type Stream struct {
	s      *Session
	ys     *yamux.Stream
	kind   protocol.StreamKind
	closed atomic.Bool
}

var _ net.Conn = (*Stream)(nil)

func newStream(s *Session, ys *yamux.Stream, k protocol.StreamKind) *Stream {
	return &Stream{s: s, ys: ys, kind: k}
}

// Kind is the stream's kind.
func (st *Stream) Kind() protocol.StreamKind { return st.kind }

// ID is yamux's stream id, for logs.
func (st *Stream) ID() uint32 { return st.ys.StreamID() }

// Session is the session the stream belongs to.
func (st *Stream) Session() *Session { return st.s }

// Read reads stream bytes. It returns io.EOF after the peer's CloseWrite
// or Close, and the session's error (*StreamError wrapping a *LostError or
// ErrClosed) when the session ended.
func (st *Stream) Read(p []byte) (int, error) {
	n, err := st.ys.Read(p)
	if err != nil {
		err = st.mapErr("read", err)
	}
	return n, err
}

// Write writes stream bytes; blocked by flow control, it returns when the
// peer reads, a deadline passes, the stream closes or the session ends.
func (st *Stream) Write(p []byte) (int, error) {
	n, err := st.ys.Write(p)
	if err != nil {
		err = st.mapErr("write", err)
	}
	return n, err
}

func (st *Stream) mapErr(op string, err error) error {
	if st.closed.Load() {
		return &StreamError{Op: op, Kind: st.kind, ID: st.ID(), Err: net.ErrClosed}
	}
	if st.s.mux.IsClosed() || errors.Is(err, yamux.ErrConnectionWriteTimeout) {
		// yamux reports a dead session as EOF or "stream closed"; say why.
		return &StreamError{Op: op, Kind: st.kind, ID: st.ID(), Err: st.s.mapErr(err)}
	}
	if err == io.EOF {
		return io.EOF // a clean end of the peer's side, as io.Reader requires
	}
	if errors.Is(err, yamux.ErrTimeout) {
		err = os.ErrDeadlineExceeded
	}
	return &StreamError{Op: op, Kind: st.kind, ID: st.ID(), Err: err}
}

// CloseWrite ends this side's bytes: the peer reads io.EOF after them.
// Reading goes on.
func (st *Stream) CloseWrite() error {
	if err := st.ys.Close(); err != nil && !errors.Is(err, yamux.ErrSessionShutdown) {
		return &StreamError{Op: "close", Kind: st.kind, ID: st.ID(), Err: err}
	}
	return nil
}

// Close ends the stream both ways. Blocked and later calls return an error
// wrapping net.ErrClosed; the peer reads io.EOF after the bytes already
// sent.
func (st *Stream) Close() error {
	if st.closed.Swap(true) {
		return nil
	}
	err := st.ys.Close()
	_ = st.ys.SetDeadline(time.Unix(1, 0)) // wake blocked Read and Write
	if err != nil && !errors.Is(err, yamux.ErrSessionShutdown) {
		return &StreamError{Op: "close", Kind: st.kind, ID: st.ID(), Err: err}
	}
	return nil
}

// Reset ends the stream with an error the peer sees: an error frame
// (protocol.AsError(err)), then Close. Call it when no Write is in flight
// and frames written so far are complete, as the frame may otherwise land
// inside one. It waits at most the keepalive timeout for the frame to go.
func (st *Stream) Reset(err error) {
	if st.closed.Load() {
		return
	}
	_ = st.ys.SetWriteDeadline(time.Now().Add(st.s.cfg.KeepaliveTimeout))
	if _, werr := st.ys.Write(frame.AppendError(nil, err)); werr != nil {
		st.s.log.Debug("stream reset: error frame not sent", keyKind, st.kind.String(), keyStream, st.ID(), keyErr, werr)
	}
	_ = st.Close()
}

// refuse answers an incoming stream the session will not accept.
func (st *Stream) refuse(e *protocol.Error) {
	st.s.log.Info("stream refused", keyKind, st.kind.String(), keyStream, st.ID(), keyErr, e)
	st.Reset(e)
}

// SetDeadline sets the read and write deadlines.
func (st *Stream) SetDeadline(t time.Time) error { return st.ys.SetDeadline(t) }

// SetReadDeadline sets the deadline for blocked and later reads.
func (st *Stream) SetReadDeadline(t time.Time) error { return st.ys.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline for blocked and later writes.
func (st *Stream) SetWriteDeadline(t time.Time) error { return st.ys.SetWriteDeadline(t) }

// LocalAddr is the session's local address.
func (st *Stream) LocalAddr() net.Addr { return st.s.LocalAddr() }

// RemoteAddr is the session's remote address.
func (st *Stream) RemoteAddr() net.Addr { return st.s.RemoteAddr() }
