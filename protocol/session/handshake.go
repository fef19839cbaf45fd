package session

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/ferrydr/ferry/internal/buildinfo"
	"github.com/ferrydr/ferry/protocol"
)

// lingerTimeout bounds how long a refused connection is kept open so that
// the refusal (a TLS alert, a verdict) reaches the peer before the close.
const lingerTimeout = time.Second

// Dial connects to a controller at addr: TCP, TLS 1.3 with ALPN ferry/1,
// banner and verdict, then yamux as its client. cfg.TLS is required; its
// ServerName defaults to addr's host.
func Dial(ctx context.Context, addr string, cfg Config) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.TLS == nil {
		return nil, fmt.Errorf("session: config: TLS is required to dial")
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &HandshakeError{Op: "dial", Peer: addr, Err: err}
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return client(ctx, raw, host, cfg)
}

// Client runs the client side over conn, which may be any connection (a
// proxy's, in tests). TLS is done here; ServerName defaults to the host of
// conn's remote address.
func Client(ctx context.Context, conn net.Conn, cfg Config) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		_ = conn.Close()
		return nil, err
	}
	if cfg.TLS == nil {
		_ = conn.Close()
		return nil, fmt.Errorf("session: config: TLS is required for a client")
	}
	host, _, err := net.SplitHostPort(conn.RemoteAddr().String())
	if err != nil {
		host = conn.RemoteAddr().String()
	}
	return client(ctx, conn, host, cfg)
}

func client(ctx context.Context, raw net.Conn, host string, cfg Config) (*Session, error) {
	cfg = cfg.withDefaults()
	tc := cfg.TLS.Clone()
	tc.NextProtos = []string{protocol.ALPN}
	tc.MinVersion = tls.VersionTLS13
	if tc.ServerName == "" {
		tc.ServerName = host
	}
	return establish(ctx, tls.Client(Coalesce(raw), tc), cfg, true)
}

// Server runs the controller side over conn, accepted by a listener whose
// TLS configuration offers ALPN ferry/1 (and verifies client certificates
// if given). The TLS handshake may or may not have run yet.
func Server(ctx context.Context, conn *tls.Conn, cfg Config) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return establish(ctx, conn, cfg.withDefaults(), false)
}

// establish runs TLS, the banner and the verdict, then starts yamux.
func establish(ctx context.Context, tc *tls.Conn, cfg Config, isClient bool) (*Session, error) {
	peerAddr := tc.RemoteAddr().String()
	fail := func(op string, err error) (*Session, error) {
		if ctx.Err() != nil {
			if !errors.Is(err, ctx.Err()) {
				err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
			}
			_ = tc.NetConn().Close() // cancelled: no time to linger
		} else {
			linger(tc)
		}
		return nil, &HandshakeError{Op: op, Peer: peerAddr, Err: err}
	}

	deadline := time.Now().Add(cfg.HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = tc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = tc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if err := tc.HandshakeContext(ctx); err != nil {
		return fail("tls", err)
	}
	state := tc.ConnectionState()
	if state.Version != tls.VersionTLS13 {
		return fail("tls", protocol.Errorf(protocol.CodeInvalid, "TLS version %#04x; ferry needs TLS 1.3", state.Version))
	}
	if state.NegotiatedProtocol != protocol.ALPN {
		return fail("tls", protocol.Errorf(protocol.CodeVersionMismatch, "peer did not agree to ALPN %s (negotiated %q)", protocol.ALPN, state.NegotiatedProtocol))
	}

	// Both sides send their banner at once, then read the peer's: a few
	// dozen bytes each, so neither write can block on the other's read.
	mine := protocol.Banner{Versions: cfg.Versions, Name: cfg.Name, Software: protocol.SanitizeSoftware(buildinfo.Version)}
	if err := protocol.WriteBanner(tc, mine); err != nil {
		return fail(readOp("banner", err), err)
	}
	peer, err := protocol.ReadBanner(tc)
	if err != nil {
		return fail(readOp("banner", err), err)
	}

	version, nerr := protocol.Negotiate(cfg.Versions, peer.Versions, cfg.Name, peer.Name)
	verdict := protocol.Verdict{Version: version}
	if nerr != nil {
		verdict = protocol.Verdict{Err: protocol.AsError(nerr)}
	}
	if err := protocol.WriteVerdict(tc, verdict); err != nil {
		return fail(readOp("verdict", err), err)
	}
	// Reading the peer's verdict before closing, even after a mismatch,
	// delivers ours intact and gives the peer's wording for the logs.
	theirs, rerr := protocol.ReadVerdict(tc)
	if nerr != nil {
		vm, _ := errors.AsType[*protocol.VersionMismatchError](nerr)
		if rerr == nil && theirs.Err != nil {
			vm.PeerMessage = theirs.Err.Message
		}
		cfg.Logger.Warn("session refused", keyPeer, peerAddr, keyErr, vm)
		return fail("verdict", vm)
	}
	if rerr != nil {
		return fail(readOp("verdict", rerr), rerr)
	}
	if theirs.Err != nil {
		if theirs.Err.Code == protocol.CodeVersionMismatch {
			return fail("verdict", &protocol.VersionMismatchError{Local: cfg.Versions, Peer: peer.Versions,
				LocalName: cfg.Name, PeerName: peer.Name, PeerMessage: theirs.Err.Message})
		}
		return fail("verdict", theirs.Err)
	}
	if theirs.Version != version {
		return fail("verdict", protocol.Errorf(protocol.CodeVersionMismatch,
			"peer chose version %d, this side %d (ranges %s and %s)", theirs.Version, version, cfg.Versions, peer.Versions))
	}
	if !stop() {
		return fail("verdict", context.Cause(ctx))
	}
	_ = tc.SetDeadline(time.Time{})
	return newSession(tc, cfg, isClient, peer, version)
}

// readOp names the step of a read failure: a TLS alert that arrives while
// reading the banner (TLS 1.3 clients learn of a refused certificate then)
// is a "tls" failure.
func readOp(op string, err error) string {
	if _, ok := remoteAlert(err); ok {
		return "tls"
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return "tls"
	}
	return op
}

// linger closes tc so that what was sent last (an alert, a verdict)
// arrives: half-close, drain what the peer still sends for a moment, then
// close. Closing with unread data would send a TCP reset that can
// overtake it.
func linger(tc *tls.Conn) {
	raw := tc.NetConn()
	_ = raw.SetDeadline(time.Now().Add(lingerTimeout))
	if cw, ok := raw.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		buf := make([]byte, 4096)
		for {
			if _, err := raw.Read(buf); err != nil {
				break
			}
		}
	}
	_ = raw.Close()
}
