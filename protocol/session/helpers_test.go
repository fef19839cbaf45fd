package session

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/testpki"
)

// pki is one test's certificates.
type pki struct {
	ca, other      *testpki.CA
	server, client tls.Certificate
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	now := time.Now()
	ca, err := testpki.NewCA("ferry test CA", now)
	require.NoError(t, err)
	other, err := testpki.NewCA("some other CA", now)
	require.NoError(t, err)
	srv, err := ca.Server()
	require.NoError(t, err)
	cli, err := ca.Client("agent-1")
	require.NoError(t, err)
	return &pki{ca: ca, other: other, server: srv, client: cli}
}

// serverResult is what the test server's side of one connection gave.
type serverResult struct {
	s   *Session
	err error
}

// controller is a real TLS listener on the loopback that runs Server on
// every connection it accepts, as the controller does.
type controller struct {
	ln      net.Listener
	results chan serverResult
}

// coalescing wraps what it accepts as the controller does (Coalesce).
type coalescing struct{ net.Listener }

func (l coalescing) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Coalesce(c), nil
}

func listen(t testing.TB, tlsCfg *tls.Config, cfg Config) *controller {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	c := &controller{ln: tls.NewListener(coalescing{raw}, tlsCfg), results: make(chan serverResult, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := c.ln.Accept()
			if err != nil {
				return
			}
			go func() {
				s, err := Server(ctx, conn.(*tls.Conn), cfg)
				c.results <- serverResult{s, err}
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = c.ln.Close()
		<-done
		for {
			select {
			case r := <-c.results:
				if r.s != nil {
					_ = r.s.Close()
				}
			default:
				return
			}
		}
	})
	return c
}

func (c *controller) addr() string { return c.ln.Addr().String() }

// next waits for the server side of the next connection.
func (c *controller) next(t testing.TB) (*Session, error) {
	t.Helper()
	select {
	case r := <-c.results:
		if r.s != nil {
			t.Cleanup(func() { _ = r.s.Close() })
		}
		return r.s, r.err
	case <-time.After(20 * time.Second):
		t.Fatal("the server side never finished its handshake")
		return nil, nil
	}
}

func agentConfig(p *pki, withCert bool) Config {
	cfg := DefaultConfig()
	cfg.Name = "agent"
	if withCert {
		cfg.TLS = p.ca.ClientConfig(&p.client)
	} else {
		cfg.TLS = p.ca.ClientConfig(nil)
	}
	return cfg
}

func controllerConfig() Config {
	cfg := DefaultConfig()
	cfg.Name = "controller"
	return cfg
}

// pair dials a controller and returns both sides of an established session.
func pair(t testing.TB, agentCfg, ctrlCfg Config, p *pki) (agent, ctrl *Session) {
	t.Helper()
	c := listen(t, p.ca.ServerConfig(p.server), ctrlCfg)
	agent, err := Dial(context.Background(), c.addr(), agentCfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = agent.Close() })
	ctrl, err = c.next(t)
	require.NoError(t, err)
	return agent, ctrl
}

// within runs f and fails the test if it does not return within d: the
// bound on "returns promptly, no hang".
func within(t testing.TB, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

func requireLost(t testing.TB, err error) {
	t.Helper()
	require.Error(t, err)
	require.ErrorIs(t, err, protocol.ErrUnavailable, "%v", err)
	var lost *LostError
	require.True(t, errors.As(err, &lost), "want a *LostError, got %T: %v", err, err)
	require.True(t, protocol.Retryable(err))
}
