package session

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/ferrydr/ferry/protocol"
)

// yamuxBacklog is the least yamux accept backlog (its default).
const yamuxBacklog = 256

// Log attribute keys.
const (
	keyPeer         = "peer"
	keyPeerName     = "peer_name"
	keyPeerVersions = "peer_versions"
	keyPeerSoftware = "peer_software"
	keyVersion      = "version"
	keyKind         = "kind"
	keyStream       = "stream"
	keyErr          = "err"
)

// Session is an established session. Its methods are safe for concurrent
// use.
type Session struct {
	cfg      Config
	log      *slog.Logger
	tc       *tls.Conn
	mux      *yamux.Session
	peer     protocol.Banner
	version  uint16
	certs    []*x509.Certificate
	incoming chan *Stream

	closing   atomic.Bool // Close was called: the end is ours
	closeOnce sync.Once
	abortErr  atomic.Pointer[error] // why this side gave up on the link
	done      chan struct{}         // closed once err is set
	err       error
}

func newSession(tc *tls.Conn, cfg Config, isClient bool, peer protocol.Banner, version uint16) (*Session, error) {
	s := &Session{
		cfg:      cfg,
		tc:       tc,
		peer:     peer,
		version:  version,
		certs:    tc.ConnectionState().PeerCertificates,
		incoming: make(chan *Stream, cfg.AcceptBacklog),
		done:     make(chan struct{}),
	}
	s.log = cfg.Logger.With(keyPeer, tc.RemoteAddr().String(), keyPeerName, peer.Name)
	ycfg := &yamux.Config{
		// yamux resets streams past its own backlog before the accept
		// loop sees them; keep it wide and apply cfg.AcceptBacklog in
		// admit, where a refusal says why.
		AcceptBacklog:          max(cfg.AcceptBacklog, yamuxBacklog),
		EnableKeepAlive:        true,
		KeepAliveInterval:      cfg.KeepaliveInterval,
		ConnectionWriteTimeout: cfg.KeepaliveTimeout,
		MaxStreamWindowSize:    cfg.StreamWindow,
		StreamOpenTimeout:      cfg.StreamOpenTimeout,
		// Half-closed streams stay readable for as long as the caller
		// wants (a long call's response); Stream.Close cleans up.
		StreamCloseTimeout: 0,
		Logger:             yamuxLogger{s.log},
	}
	t := &transport{Conn: tc, graceful: &s.closing}
	t.co, _ = tc.NetConn().(*Coalescer)
	var err error
	if isClient {
		s.mux, err = yamux.Client(t, ycfg)
	} else {
		s.mux, err = yamux.Server(t, ycfg)
	}
	if err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("session: yamux: %w", err)
	}
	go s.acceptLoop()
	if cfg.MaxLifetime > 0 {
		go s.expire(cfg.MaxLifetime)
	}
	s.log.Debug("session established", keyVersion, version, keyPeerVersions, peer.Versions.String(), keyPeerSoftware, peer.Software)
	return s, nil
}

// Open opens a stream of kind k to the peer and sends its kind byte. The
// peer may refuse the kind (k may be one this build does not know, for a
// newer peer); the opener learns of a refusal from the error frame that its
// first frame read returns (a *protocol.Error from frame.Reader).
func (s *Session) Open(ctx context.Context, k protocol.StreamKind) (*Stream, error) {
	if k == 0 {
		return nil, &StreamError{Op: "open", Kind: k, Err: protocol.Errorf(protocol.CodeInvalid, "stream kind 0 does not exist")}
	}
	if err := ctx.Err(); err != nil {
		return nil, &StreamError{Op: "open", Kind: k, Err: err}
	}
	type opened struct {
		ys  *yamux.Stream
		err error
	}
	ch := make(chan opened, 1)
	// OpenStream blocks only while AcceptBacklog opens await the peer's
	// acknowledgement; the goroutine keeps ctx in charge of that wait.
	go func() {
		ys, err := s.mux.OpenStream()
		ch <- opened{ys, err}
	}()
	var o opened
	select {
	case o = <-ch:
	case <-ctx.Done():
		go func() {
			if o := <-ch; o.ys != nil {
				_ = o.ys.Close()
			}
		}()
		return nil, &StreamError{Op: "open", Kind: k, Err: ctx.Err()}
	}
	if o.err != nil {
		return nil, &StreamError{Op: "open", Kind: k, Err: s.mapErr(o.err)}
	}
	st := newStream(s, o.ys, k)
	if d, ok := ctx.Deadline(); ok {
		_ = o.ys.SetWriteDeadline(d)
	}
	if _, err := st.ys.Write([]byte{byte(k)}); err != nil {
		_ = st.Close()
		return nil, &StreamError{Op: "open", Kind: k, ID: o.ys.StreamID(), Err: s.mapErr(err)}
	}
	_ = o.ys.SetWriteDeadline(time.Time{})
	return st, nil
}

// Accept returns the next stream the peer opened, its kind read and
// admitted by Config.AllowKind.
func (s *Session) Accept(ctx context.Context) (*Stream, error) {
	select {
	case st := <-s.incoming:
		return st, nil
	case <-s.done:
		return nil, s.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// acceptLoop takes every stream the peer opens and admits it on its own
// goroutine; it ends with the session and records why.
func (s *Session) acceptLoop() {
	for {
		ys, err := s.mux.AcceptStream()
		if err != nil {
			s.finish(err)
			return
		}
		// The new stream is counted: yamux registered it.
		if n := s.mux.NumStreams(); n > s.cfg.MaxStreams {
			if s.cfg.EndOnExcess {
				s.log.Info("session ended: stream limit", keyStream, ys.StreamID(), keyErr, ErrStreamLimit)
				go s.abort(fmt.Errorf("%w (%d)", ErrStreamLimit, s.cfg.MaxStreams))
				continue // the accept loop records the end
			}
			go newStream(s, ys, 0).refuse(protocol.Errorf(protocol.CodeBusy, "%d streams are open, the limit is %d", n-1, s.cfg.MaxStreams))
			continue
		}
		go s.admit(ys)
	}
}

// expire ends the session after its lifetime unless it ends first.
func (s *Session) expire(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		s.log.Info("session ended: lifetime limit", keyErr, ErrLifetime)
		s.abort(fmt.Errorf("%w (%v)", ErrLifetime, d))
	case <-s.done:
	}
}

// admit reads an incoming stream's kind and queues it for Accept, or
// refuses it with an error frame.
func (s *Session) admit(ys *yamux.Stream) {
	_ = ys.SetReadDeadline(time.Now().Add(s.cfg.StreamOpenTimeout))
	var kb [1]byte
	if _, err := io.ReadFull(ys, kb[:]); err != nil {
		s.log.Debug("incoming stream sent no kind", keyStream, ys.StreamID(), keyErr, err)
		_ = ys.Close()
		return
	}
	_ = ys.SetReadDeadline(time.Time{})
	st := newStream(s, ys, protocol.StreamKind(kb[0]))
	if !st.kind.Known() {
		st.refuse(protocol.Errorf(protocol.CodeInvalid, "unknown stream kind %d (%s speaks protocol %s)", kb[0], s.cfg.Name, s.cfg.Versions))
		return
	}
	if s.cfg.AllowKind != nil {
		if err := s.cfg.AllowKind(st.kind, s.certs); err != nil {
			pe := protocol.AsError(err)
			if pe.Code == protocol.CodeInternal && !errors.Is(err, protocol.ErrInternal) {
				pe.Code = protocol.CodeUnauthorized // a gate's plain error is a refusal
			}
			st.refuse(pe)
			return
		}
	}
	select {
	case s.incoming <- st:
	default:
		st.refuse(protocol.Errorf(protocol.CodeBusy, "%d streams already wait to be accepted", cap(s.incoming)))
	}
}

// finish records why the session ended and releases waiters.
func (s *Session) finish(cause error) {
	if p := s.abortErr.Load(); p != nil {
		cause = *p
	}
	if s.closing.Load() {
		s.err = ErrClosed
	} else {
		s.err = &LostError{Peer: s.tc.RemoteAddr().String(), PeerName: s.peer.Name, Err: cause}
		s.log.Info("session ended", keyErr, s.err)
	}
	close(s.done)
	_ = s.mux.Close()
}

// abort ends the session after a failure seen on the link itself.
func (s *Session) abort(cause error) {
	s.abortErr.CompareAndSwap(nil, &cause)
	go func() { _ = s.mux.Close() }()
	<-s.done
}

// mapErr turns a yamux error into the session's error when the session has
// ended. A write that waited past the keepalive timeout ends the session:
// yamux leaves such a frame queued, to go out later, so the stream's bytes
// are no longer what its writer believes, and the link is most likely dead.
func (s *Session) mapErr(err error) error {
	if errors.Is(err, yamux.ErrConnectionWriteTimeout) {
		s.abort(err)
	}
	if s.mux.IsClosed() {
		<-s.done // the accept loop records the cause at once
		return s.err
	}
	return err
}

// Close ends the session: every stream fails with ErrClosed, and the peer
// sees the connection close. It waits until the session is down.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		_ = s.mux.Close()
	})
	<-s.done
	return nil
}

// Abandon ends the session as lost rather than closed: this side gives up
// on a link it believes dead (the peer came back on a new session, say).
// Every stream fails with a *LostError wrapping cause — retryable, like a
// failed connection — where Close would give the final ErrClosed. It waits
// until the session is down.
func (s *Session) Abandon(cause error) {
	s.abort(cause)
}

// Done is closed when the session has ended; Err then says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is nil while the session runs; afterwards ErrClosed when this side
// closed it, or a *LostError.
func (s *Session) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// PeerCertificates is the chain the peer presented; empty without one.
func (s *Session) PeerCertificates() []*x509.Certificate { return s.certs }

// PeerVersion is the version range from the peer's banner.
func (s *Session) PeerVersion() protocol.VersionRange { return s.peer.Versions }

// PeerName is the name from the peer's banner ("agent", "controller").
func (s *Session) PeerName() string { return s.peer.Name }

// PeerSoftware is the build version from the peer's banner.
func (s *Session) PeerSoftware() string { return s.peer.Software }

// Version is the negotiated protocol version: the highest both speak.
func (s *Session) Version() uint16 { return s.version }

// RemoteAddr is the peer's address.
func (s *Session) RemoteAddr() net.Addr { return s.tc.RemoteAddr() }

// LocalAddr is this side's address.
func (s *Session) LocalAddr() net.Addr { return s.tc.LocalAddr() }

// NumStreams is the number of open streams.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }

// transport is the connection under yamux. Closing it after a local Close
// sends TLS close_notify (bounded in time), so the peer sees an orderly
// end; after a failure it closes the socket at once, since writing to a
// dead link could block.
type transport struct {
	*tls.Conn
	graceful *atomic.Bool
	co       *Coalescer // nil when the TLS runs over a plain connection
}

// Write sends one yamux frame part (a header, or a body of up to the
// stream window): its TLS records leave together when the connection
// under TLS coalesces.
func (t *transport) Write(p []byte) (int, error) {
	if t.co == nil {
		return t.Conn.Write(p)
	}
	t.co.cork()
	n, err := t.Conn.Write(p)
	if ferr := t.co.uncork(); err == nil && ferr != nil {
		n, err = 0, ferr
	}
	return n, err
}

// closeNotifyTimeout bounds the close_notify write of an orderly close.
const closeNotifyTimeout = time.Second

func (t *transport) Close() error {
	raw := t.NetConn()
	cw, ok := raw.(interface{ CloseWrite() error })
	if !t.graceful.Load() || !ok {
		return raw.Close()
	}
	// Orderly: close_notify and FIN, then let yamux's reader drain until
	// the peer closes too, so that no unread byte turns our close into a
	// reset that could overtake the close_notify. The timer bounds the
	// wait for a peer that never closes (and unblocks a stuck write).
	time.AfterFunc(closeNotifyTimeout, func() { _ = raw.Close() })
	_ = t.Conn.CloseWrite()
	_ = cw.CloseWrite()
	return nil
}

// yamuxLogger sends yamux's log lines to slog: its errors as warnings, the
// rest at debug level.
type yamuxLogger struct{ log *slog.Logger }

func (l yamuxLogger) Print(v ...any) { l.emit(fmt.Sprint(v...)) }
func (l yamuxLogger) Printf(format string, v ...any) {
	l.emit(fmt.Sprintf(format, v...))
}
func (l yamuxLogger) Println(v ...any) { l.emit(fmt.Sprintln(v...)) }

func (l yamuxLogger) emit(line string) {
	line = strings.TrimSpace(line)
	if msg, ok := strings.CutPrefix(line, "[ERR] "); ok {
		l.log.Warn(msg)
		return
	}
	l.log.Debug(line)
}
