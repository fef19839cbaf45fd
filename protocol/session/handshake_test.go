package session

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
)

func TestSessionEstablished(t *testing.T) {
	p := newPKI(t)
	agent, ctrl := pair(t, agentConfig(p, true), controllerConfig(), p)

	require.Equal(t, protocol.VersionMax, agent.Version())
	require.Equal(t, protocol.VersionMax, ctrl.Version())
	require.Equal(t, "controller", agent.PeerName())
	require.Equal(t, "agent", ctrl.PeerName())
	require.Equal(t, protocol.Supported(), agent.PeerVersion())
	require.NotEmpty(t, agent.PeerSoftware())
	require.Len(t, ctrl.PeerCertificates(), 1)
	require.Equal(t, "agent-1", ctrl.PeerCertificates()[0].Subject.CommonName)
	require.Equal(t, "controller", agent.PeerCertificates()[0].Subject.CommonName)
	require.Equal(t, agent.LocalAddr().String(), ctrl.RemoteAddr().String())
	require.NoError(t, agent.Err())
}

func TestWrongCA(t *testing.T) {
	p := newPKI(t)

	t.Run("server certificate from an unknown CA", func(t *testing.T) {
		c := listen(t, p.ca.ServerConfig(p.server), controllerConfig())
		cfg := agentConfig(p, true)
		cfg.TLS = p.other.ClientConfig(&p.client) // trusts only the other CA
		_, err := Dial(t.Context(), c.addr(), cfg)
		var he *HandshakeError
		require.ErrorAs(t, err, &he)
		require.Equal(t, "tls", he.Op)
		require.ErrorIs(t, err, protocol.ErrUnauthorized)
		var ua x509.UnknownAuthorityError
		require.ErrorAs(t, err, &ua)
		require.False(t, protocol.Retryable(err))
		require.Contains(t, err.Error(), "certificate signed by unknown authority")

		_, serr := c.next(t)
		require.Error(t, serr, "the server side fails too")
	})

	t.Run("client certificate from an unknown CA", func(t *testing.T) {
		c := listen(t, p.ca.ServerConfig(p.server), controllerConfig())
		stranger, err := p.other.Client("intruder")
		require.NoError(t, err)
		cfg := agentConfig(p, true)
		cfg.TLS = p.ca.ClientConfig(nil)
		// Present the certificate whatever CAs the server names: a Go
		// client given only Certificates would send none (and count as a
		// client without a certificate, see TestClientWithoutCertificate).
		cfg.TLS.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &stranger, nil }
		_, err = Dial(t.Context(), c.addr(), cfg)
		var he *HandshakeError
		require.ErrorAs(t, err, &he)
		require.Equal(t, "tls", he.Op, "a TLS 1.3 client hears of the refusal on its first read: %v", err)
		require.ErrorIs(t, err, protocol.ErrUnauthorized, "%v", err)

		_, serr := c.next(t)
		require.ErrorIs(t, serr, protocol.ErrUnauthorized)
		var ua x509.UnknownAuthorityError
		require.ErrorAs(t, serr, &ua)
	})
}

func TestExpiredCertificate(t *testing.T) {
	p := newPKI(t)

	t.Run("server", func(t *testing.T) {
		old, err := p.ca.Expired("controller", false)
		require.NoError(t, err)
		c := listen(t, p.ca.ServerConfig(old), controllerConfig())
		_, err = Dial(t.Context(), c.addr(), agentConfig(p, true))
		require.ErrorIs(t, err, protocol.ErrUnauthorized)
		var inv x509.CertificateInvalidError
		require.ErrorAs(t, err, &inv)
		require.Equal(t, x509.Expired, inv.Reason)
		require.Contains(t, err.Error(), "expired")
		_, serr := c.next(t)
		require.Error(t, serr)
	})

	t.Run("client", func(t *testing.T) {
		old, err := p.ca.Expired("agent-1", true)
		require.NoError(t, err)
		c := listen(t, p.ca.ServerConfig(p.server), controllerConfig())
		cfg := agentConfig(p, true)
		cfg.TLS = p.ca.ClientConfig(&old)
		_, err = Dial(t.Context(), c.addr(), cfg)
		require.ErrorIs(t, err, protocol.ErrUnauthorized, "%v", err)
		a, ok := remoteAlert(err)
		require.True(t, ok, "%v", err)
		require.Equal(t, tls.AlertError(45), a, "certificate_expired")

		_, serr := c.next(t)
		require.ErrorIs(t, serr, protocol.ErrUnauthorized)
		var inv x509.CertificateInvalidError
		require.ErrorAs(t, serr, &inv)
		require.Equal(t, x509.Expired, inv.Reason)
	})
}

func TestVersionMismatch(t *testing.T) {
	p := newPKI(t)
	ctrlCfg := controllerConfig()
	ctrlCfg.Versions = protocol.VersionRange{Min: 2, Max: 3}
	c := listen(t, p.ca.ServerConfig(p.server), ctrlCfg)
	agentCfg := agentConfig(p, true)
	agentCfg.Versions = protocol.VersionRange{Min: 1, Max: 1}

	_, err := Dial(t.Context(), c.addr(), agentCfg)
	var vm *protocol.VersionMismatchError
	require.ErrorAs(t, err, &vm)
	require.ErrorIs(t, err, protocol.ErrVersionMismatch)
	require.False(t, protocol.Retryable(err))
	require.Equal(t, "ferry: protocol version mismatch: agent speaks 1–1, controller speaks 2–3", vm.Error())
	require.Equal(t, "ferry: protocol version mismatch: controller speaks 2–3, agent speaks 1–1", vm.PeerMessage,
		"the controller's message was delivered before the close")

	_, serr := c.next(t)
	require.ErrorAs(t, serr, &vm)
	require.Equal(t, "ferry: protocol version mismatch: controller speaks 2–3, agent speaks 1–1", vm.Error())
	require.Equal(t, "ferry: protocol version mismatch: agent speaks 1–1, controller speaks 2–3", vm.PeerMessage)
}

// An agent of this build against a controller of the previous release
// (1–2) is refused, and the error says to upgrade the controller; an agent
// of the previous release (1–2) is served by this build's controller.
func TestAgentNewerThanControllerIsRefused(t *testing.T) {
	p := newPKI(t)
	old := controllerConfig()
	old.Versions = protocol.VersionRange{Min: 1, Max: 2}
	c := listen(t, p.ca.ServerConfig(p.server), old)
	agentCfg := agentConfig(p, true)
	agentCfg.Versions = protocol.AgentVersions()
	_, err := Dial(t.Context(), c.addr(), agentCfg)
	require.ErrorIs(t, err, protocol.ErrVersionMismatch)
	require.Contains(t, protocol.OlderPeerHint(err, "controller"), "upgrade it first")

	oldAgent := agentConfig(p, true)
	oldAgent.Versions = protocol.VersionRange{Min: 1, Max: 2}
	agent, ctrl := pair(t, oldAgent, controllerConfig(), p)
	require.Equal(t, uint16(2), agent.Version())
	require.Equal(t, uint16(2), ctrl.Version())

	require.Empty(t, protocol.OlderPeerHint(errors.New("connection refused"), "controller"))
}

func TestVersionNegotiation(t *testing.T) {
	p := newPKI(t)
	ctrlCfg := controllerConfig()
	ctrlCfg.Versions = protocol.VersionRange{Min: 2, Max: 5}
	agentCfg := agentConfig(p, true)
	agentCfg.Versions = protocol.VersionRange{Min: 1, Max: 3}
	agent, ctrl := pair(t, agentCfg, ctrlCfg, p)
	require.Equal(t, uint16(3), agent.Version(), "highest common version")
	require.Equal(t, uint16(3), ctrl.Version())
	require.Equal(t, protocol.VersionRange{Min: 2, Max: 5}, agent.PeerVersion())
}

func TestServerWithoutFerryALPN(t *testing.T) {
	p := newPKI(t)
	tlsCfg := p.ca.ServerConfig(p.server)
	tlsCfg.NextProtos = []string{protocol.ALPNHTTP} // an HTTPS-only port
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := tls.NewListener(raw, tlsCfg)
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			_ = conn.(*tls.Conn).Handshake()
			_ = conn.Close()
		}
	}()
	_, err = Dial(t.Context(), ln.Addr().String(), agentConfig(p, true))
	require.ErrorIs(t, err, protocol.ErrVersionMismatch, "%v", err)
}

func TestHandshakeCancelled(t *testing.T) {
	// A listener that accepts TCP and never answers: the dial waits on TLS
	// until the context ends.
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer raw.Close()
	accepted := make(chan struct{})
	go func() {
		c, err := raw.Accept()
		close(accepted)
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c) // until the client goes
		}
	}()
	p := newPKI(t)
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := Dial(ctx, raw.Addr().String(), agentConfig(p, true))
		errc <- err
	}()
	<-accepted // the client now waits for the server's TLS reply
	cancel()
	within(t, 5e9, "Dial after cancel", func() { err = <-errc })
	require.ErrorIs(t, err, context.Canceled)
}

func TestConfigValidate(t *testing.T) {
	require.NoError(t, DefaultConfig().Validate())
	require.NoError(t, Config{}.Validate(), "zero values take defaults")
	for _, bad := range []Config{
		{Name: "Agent Smith"},
		{Versions: protocol.VersionRange{Min: 3, Max: 2}},
		{KeepaliveInterval: -1},
		{StreamWindow: 1024},
		{AcceptBacklog: -1},
	} {
		require.Error(t, bad.Validate(), "%+v", bad)
	}
	_, err := Dial(t.Context(), "127.0.0.1:1", Config{Name: "agent"})
	require.Error(t, err, "dialling needs TLS")
	require.False(t, errors.Is(err, protocol.ErrUnavailable))
}

// The controller's listener completes the TLS handshake itself to see the
// ALPN before handing the connection to Server.
func TestServerAfterListenerHandshake(t *testing.T) {
	p := newPKI(t)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := tls.NewListener(raw, p.ca.ServerConfig(p.server))
	defer ln.Close()
	got := make(chan serverResult, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- serverResult{nil, err}
			return
		}
		tc := conn.(*tls.Conn)
		if err := tc.HandshakeContext(context.Background()); err != nil {
			got <- serverResult{nil, err}
			return
		}
		if tc.ConnectionState().NegotiatedProtocol != protocol.ALPN {
			got <- serverResult{nil, errors.New("not ferry/1")}
			return
		}
		s, err := Server(context.Background(), tc, controllerConfig())
		got <- serverResult{s, err}
	}()
	agent, err := Dial(t.Context(), ln.Addr().String(), agentConfig(p, true))
	require.NoError(t, err)
	defer agent.Close()
	r := <-got
	require.NoError(t, r.err)
	defer r.s.Close()
	require.Equal(t, "agent", r.s.PeerName())
}
