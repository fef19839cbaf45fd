package rpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/session"
	"github.com/ferrydr/ferry/protocol/testpki"
)

// sessions dials a real TLS session over the loopback and returns both
// sides; gate is the controller's AllowKind.
func sessions(t *testing.T, withCert bool, gate func(protocol.StreamKind, []*x509.Certificate) error) (agent, ctrl *session.Session) {
	t.Helper()
	ca, err := testpki.NewCA("rpc test CA", time.Now())
	require.NoError(t, err)
	srvCert, err := ca.Server()
	require.NoError(t, err)
	cliCert, err := ca.Client("agent-1")
	require.NoError(t, err)

	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := tls.NewListener(raw, ca.ServerConfig(srvCert))
	defer ln.Close()
	type result struct {
		s   *session.Session
		err error
	}
	got := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- result{nil, err}
			return
		}
		cfg := session.DefaultConfig()
		cfg.Name = "controller"
		cfg.AllowKind = gate
		s, err := session.Server(context.Background(), conn.(*tls.Conn), cfg)
		got <- result{s, err}
	}()

	cfg := session.DefaultConfig()
	cfg.Name = "agent"
	if withCert {
		cfg.TLS = ca.ClientConfig(&cliCert)
	} else {
		cfg.TLS = ca.ClientConfig(nil)
	}
	agent, err = session.Dial(t.Context(), ln.Addr().String(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = agent.Close() })
	r := <-got
	require.NoError(t, r.err)
	t.Cleanup(func() { _ = r.s.Close() })
	return agent, r.s
}

// serve answers calls on every stream s accepts with h, until s ends.
func serve(s *session.Session, h Handler) {
	go func() {
		for {
			st, err := s.Accept(context.Background())
			if err != nil {
				return
			}
			go func() { _ = ServeStream(context.Background(), st, h) }()
		}
	}()
}
