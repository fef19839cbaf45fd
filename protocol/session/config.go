package session

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ferrydr/ferry/protocol"
)

// Config configures one side of a session. Zero fields take the values of
// DefaultConfig.
type Config struct {
	// TLS is the client configuration for Dial and Client (certificates,
	// RootCAs, VerifyPeerCertificate for pinning); ALPN and the minimum
	// version are set here. Server uses the configuration of its *tls.Conn
	// and ignores this field.
	TLS *tls.Config
	// Versions is the protocol version range this side speaks.
	Versions protocol.VersionRange
	// Name says who this side is ("agent", "controller"); it appears in
	// the banner and in mismatch messages. [a-z0-9_-], at most 32 bytes.
	Name string
	// KeepaliveInterval is the time between pings; KeepaliveTimeout is how
	// long a ping or a write on the connection may wait. A dead link is
	// noticed within about their sum.
	KeepaliveInterval, KeepaliveTimeout time.Duration
	// StreamOpenTimeout bounds the wait for the peer to acknowledge a new
	// stream and to send an incoming stream's kind byte.
	StreamOpenTimeout time.Duration
	// HandshakeTimeout bounds TLS, banner and verdict together.
	HandshakeTimeout time.Duration
	// StreamWindow is each stream's receive window: the bytes a peer may
	// send ahead of the reader. It bounds one stream's throughput to
	// StreamWindow per round trip, and its buffer memory.
	StreamWindow uint32
	// AcceptBacklog is how many incoming streams may wait for Accept; more
	// are refused with code busy.
	AcceptBacklog int
	// MaxStreams caps the streams the session holds at once, counted as
	// yamux holds them: both directions, and half-closed ones whose peer
	// has not closed its side yet (their unread bytes stay buffered). An
	// incoming stream beyond the cap is refused with code busy, or ends
	// the session when EndOnExcess is set.
	MaxStreams int
	// EndOnExcess makes an incoming stream beyond MaxStreams end the
	// session: for a peer not yet trusted, since a refused stream's peer
	// may go on filling its receive window.
	EndOnExcess bool
	// MaxLifetime, when positive, ends the session that long after it was
	// established (a session without a certificate needs seconds).
	MaxLifetime time.Duration
	// AllowKind gates incoming streams (nil allows every known kind). It
	// gets the peer's certificate chain, empty for a peer without one. A
	// refusal reaches the opener as its error's code, or unauthorized when
	// the error carries none.
	AllowKind func(k protocol.StreamKind, peer []*x509.Certificate) error
	// Logger receives the session's logs; nil discards.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults: this build's version range,
// keepalive every 10 s with a 30 s timeout, 30 s to open a stream or
// finish the handshake, 1 MiB stream windows, a backlog of 256, at most
// 1024 streams at once (an agent replicating a few hundred machines runs
// two data streams per cycle) and no lifetime limit.
func DefaultConfig() Config {
	return Config{
		Versions:          protocol.Supported(),
		Name:              "ferry",
		KeepaliveInterval: 10 * time.Second,
		KeepaliveTimeout:  30 * time.Second,
		StreamOpenTimeout: 30 * time.Second,
		HandshakeTimeout:  30 * time.Second,
		StreamWindow:      1 << 20,
		AcceptBacklog:     256,
		MaxStreams:        1024,
	}
}

// minStreamWindow is yamux's initial window, below which it refuses to run.
const minStreamWindow = 256 << 10

// Validate reports the first unusable setting. Zero values are valid: they
// take defaults.
func (c Config) Validate() error {
	var errs []error
	c = c.withDefaults()
	if !c.Versions.Valid() {
		errs = append(errs, fmt.Errorf("versions %d-%d: need 1 ≤ min ≤ max", c.Versions.Min, c.Versions.Max))
	}
	if !protocol.ValidName(c.Name) {
		errs = append(errs, fmt.Errorf("name %q: [a-z0-9_-], 1 to %d bytes", c.Name, protocol.MaxNameLen))
	}
	for name, d := range map[string]time.Duration{
		"keepalive interval": c.KeepaliveInterval, "keepalive timeout": c.KeepaliveTimeout,
		"stream open timeout": c.StreamOpenTimeout, "handshake timeout": c.HandshakeTimeout,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s %v is negative", name, d))
		}
	}
	if c.StreamWindow < minStreamWindow {
		errs = append(errs, fmt.Errorf("stream window %d below %d", c.StreamWindow, minStreamWindow))
	}
	if c.AcceptBacklog < 0 {
		errs = append(errs, fmt.Errorf("accept backlog %d is negative", c.AcceptBacklog))
	}
	if c.MaxStreams < 0 {
		errs = append(errs, fmt.Errorf("max streams %d is negative", c.MaxStreams))
	}
	if c.MaxLifetime < 0 {
		errs = append(errs, fmt.Errorf("max lifetime %v is negative", c.MaxLifetime))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("session: config: %w", err)
	}
	return nil
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Versions == (protocol.VersionRange{}) {
		c.Versions = d.Versions
	}
	if c.Name == "" {
		c.Name = d.Name
	}
	if c.KeepaliveInterval == 0 {
		c.KeepaliveInterval = d.KeepaliveInterval
	}
	if c.KeepaliveTimeout == 0 {
		c.KeepaliveTimeout = d.KeepaliveTimeout
	}
	if c.StreamOpenTimeout == 0 {
		c.StreamOpenTimeout = d.StreamOpenTimeout
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = d.HandshakeTimeout
	}
	if c.StreamWindow == 0 {
		c.StreamWindow = d.StreamWindow
	}
	if c.AcceptBacklog == 0 {
		c.AcceptBacklog = d.AcceptBacklog
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = d.MaxStreams
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
