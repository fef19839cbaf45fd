// Package sessiontest makes real sessions for tests: mutual TLS from a
// throwaway CA over a loopback TCP connection, both ends as this build
// runs them (the controller's end over a session.Coalescer).
package sessiontest

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol/session"
	"github.com/ferrydr/ferry/protocol/testpki"
)

// Pair returns both ends of a session between a controller with the
// default configuration and an agent configured as agentCfg (its TLS and
// name are filled in). Both are closed when the test ends.
func Pair(t testing.TB, agentCfg session.Config) (ctrl, agent *session.Session) {
	t.Helper()
	ca, err := testpki.NewCA("sessiontest CA", time.Now())
	require.NoError(t, err)
	srv, err := ca.Server()
	require.NoError(t, err)
	cli, err := ca.Client("agent")
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan *session.Session, 1)
	go func() {
		defer close(accepted)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		cfg := session.DefaultConfig()
		cfg.Name = "controller"
		tc := tls.Server(session.Coalesce(c), ca.ServerConfig(srv))
		if s, err := session.Server(context.Background(), tc, cfg); err == nil {
			accepted <- s
		}
	}()
	agentCfg.Name, agentCfg.TLS = "agent", ca.ClientConfig(&cli)
	agent, err = session.Dial(context.Background(), ln.Addr().String(), agentCfg)
	require.NoError(t, err)
	t.Cleanup(func() { agent.Close() })
	ctrl = <-accepted
	require.NotNil(t, ctrl, "the controller's end never finished its handshake")
	t.Cleanup(func() { ctrl.Close() })
	return ctrl, agent
}
