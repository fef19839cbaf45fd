package session

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"

	"github.com/ferrydr/ferry/protocol"
)

// ErrClosed is the error of a session closed by this side, and of its
// streams after that.
var ErrClosed = errors.New("ferry: session closed")

// ErrStreamLimit ends a session (Config.EndOnExcess) whose peer opened
// more streams than Config.MaxStreams allows.
var ErrStreamLimit = errors.New("ferry: peer opened more streams than allowed")

// ErrLifetime ends a session that reached Config.MaxLifetime.
var ErrLifetime = errors.New("ferry: session reached its lifetime limit")

// HandshakeError says that a session could not be set up. Op is the step
// that failed: "dial", "tls", "banner" or "verdict". Besides Err, it
// matches a class sentinel when one applies: protocol.ErrUnauthorized for a
// certificate refused by either side, protocol.ErrVersionMismatch (Err is
// then a *protocol.VersionMismatchError, or the peer's refusal),
// protocol.ErrUnavailable for network failures and timeouts.
type HandshakeError struct {
	Op   string
	Peer string // the address dialled or accepted
	Err  error
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("ferry: session with %s: %s: %v", e.Peer, e.Op, e.Err)
}

func (e *HandshakeError) Unwrap() []error {
	if c := classify(e.Err); c != nil {
		return []error{e.Err, c}
	}
	return []error{e.Err}
}

// Retryable reports whether dialling again may help: network failures and
// timeouts, not certificates or versions.
func (e *HandshakeError) Retryable() bool { return classify(e.Err) == protocol.ErrUnavailable }

// certificate alerts (RFC 8446 §6.2): the peer refused our certificate.
var certAlerts = map[tls.AlertError]bool{
	42: true, 43: true, 44: true, 45: true, 46: true, 48: true, 49: true, 116: true,
}

const alertNoApplicationProtocol tls.AlertError = 120

// classify maps a handshake failure to the sentinel callers branch on.
func classify(err error) error {
	if _, ok := errors.AsType[*protocol.VersionMismatchError](err); ok {
		return nil // already matches ErrVersionMismatch
	}
	if pe, ok := errors.AsType[*protocol.Error](err); ok {
		return pe.Code.Sentinel()
	}
	if _, ok := errors.AsType[*protocol.BannerError](err); ok {
		return nil // matches ErrInvalid or ErrTooLarge by itself
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return protocol.ErrUnauthorized
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return protocol.ErrUnauthorized
	}
	if _, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		return protocol.ErrUnauthorized
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return protocol.ErrUnauthorized
	}
	if a, ok := remoteAlert(err); ok {
		switch {
		case certAlerts[a]:
			return protocol.ErrUnauthorized
		case a == alertNoApplicationProtocol:
			return protocol.ErrVersionMismatch
		}
		return protocol.ErrInvalid
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, os.ErrDeadlineExceeded) {
		return protocol.ErrUnavailable
	}
	if _, ok := errors.AsType[net.Error](err); ok {
		return protocol.ErrUnavailable
	}
	return nil
}

// remoteAlert extracts the alert a peer sent. crypto/tls reports it as a
// *net.OpError "remote error" around an unexported uint8 type, so the code
// is read by reflection rather than by matching the message.
func remoteAlert(err error) (tls.AlertError, bool) {
	if a, ok := errors.AsType[tls.AlertError](err); ok {
		return a, true
	}
	op, ok := errors.AsType[*net.OpError](err)
	if !ok || op.Op != "remote error" || op.Err == nil {
		return 0, false
	}
	v := reflect.ValueOf(op.Err)
	if v.Kind() != reflect.Uint8 {
		return 0, false
	}
	return tls.AlertError(v.Uint()), true
}

// LostError ends a session that this side did not close: the connection
// failed, a keepalive went unanswered, or the peer closed the session. It
// matches protocol.ErrUnavailable and is retryable (dial again).
type LostError struct {
	Peer     string // address
	PeerName string // from the peer's banner
	Err      error  // what yamux or the connection reported; io.EOF when the peer closed
}

func (e *LostError) Error() string {
	what := "lost"
	if errors.Is(e.Err, io.EOF) {
		what = "closed by the peer"
	}
	return fmt.Sprintf("ferry: session with %s at %s %s: %v", e.PeerName, e.Peer, what, e.Err)
}

func (e *LostError) Unwrap() []error { return []error{e.Err, protocol.ErrUnavailable} }

// Retryable is true: a new session may work.
func (e *LostError) Retryable() bool { return true }

// StreamError is the error of an operation on a stream. Err is the
// session's error when the session ended (a *LostError or ErrClosed),
// net.ErrClosed after the stream was closed, os.ErrDeadlineExceeded after a
// deadline, or what yamux reported.
type StreamError struct {
	Op   string // "open", "read", "write", "close"
	Kind protocol.StreamKind
	ID   uint32
	Err  error
}

func (e *StreamError) Error() string {
	return fmt.Sprintf("ferry: %s stream %d: %s: %v", e.Kind, e.ID, e.Op, e.Err)
}

func (e *StreamError) Unwrap() error { return e.Err }

// Timeout reports a deadline, so the error works as a net.Error.
func (e *StreamError) Timeout() bool { return errors.Is(e.Err, os.ErrDeadlineExceeded) }

// Temporary is false; it exists only for net.Error.
func (e *StreamError) Temporary() bool { return false }

var _ net.Error = (*StreamError)(nil)
