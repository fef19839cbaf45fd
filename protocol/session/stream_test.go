package session

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/frame"
)

// echoStreams accepts streams on s and echoes each back until EOF.
func echoStreams(t *testing.T, s *Session) {
	go func() {
		for {
			st, err := s.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				_, _ = io.Copy(st, st)
			}()
		}
	}()
}

func roundTrip(t *testing.T, st *Stream, msg []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := st.Write(msg)
		if err == nil {
			err = st.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(st)
	require.NoError(t, err)
	require.NoError(t, <-errc)
	require.Equal(t, msg, got)
}

func TestStreamsBothWays(t *testing.T) {
	p := newPKI(t)
	agent, ctrl := pair(t, agentConfig(p, true), controllerConfig(), p)
	echoStreams(t, ctrl)
	echoStreams(t, agent)

	msg := bytes.Repeat([]byte("block"), 300000) // 1.5 MB: several windows
	st, err := agent.Open(t.Context(), protocol.KindData)
	require.NoError(t, err)
	require.Equal(t, protocol.KindData, st.Kind())
	roundTrip(t, st, msg)

	// The controller opens streams back over the agent's session.
	back, err := ctrl.Open(t.Context(), protocol.KindRestore)
	require.NoError(t, err)
	roundTrip(t, back, msg[:1000])
	require.NoError(t, back.Close())
}

func TestAcceptSeesKind(t *testing.T) {
	p := newPKI(t)
	agent, ctrl := pair(t, agentConfig(p, true), controllerConfig(), p)
	for _, k := range []protocol.StreamKind{protocol.KindControl, protocol.KindHashes, protocol.KindLog} {
		st, err := agent.Open(t.Context(), k)
		require.NoError(t, err)
		got, err := ctrl.Accept(t.Context())
		require.NoError(t, err)
		require.Equal(t, k, got.Kind())
		require.NoError(t, st.Close())
		require.NoError(t, got.Close())
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := ctrl.Accept(ctx)
	require.ErrorIs(t, err, context.Canceled)
	_, err = agent.Open(ctx, protocol.KindData)
	require.ErrorIs(t, err, context.Canceled)
	_, err = agent.Open(t.Context(), 0)
	require.ErrorIs(t, err, protocol.ErrInvalid)
}

// readRefusal reads what an opener sees on a refused stream.
func readRefusal(t *testing.T, st *Stream) error {
	t.Helper()
	var err error
	within(t, 10*time.Second, "reading a refused stream", func() {
		_, _, err = frame.NewReader(st, 0).Next()
	})
	return err
}

func TestClientWithoutCertificate(t *testing.T) {
	p := newPKI(t)
	ctrlCfg := controllerConfig()
	ctrlCfg.AllowKind = func(k protocol.StreamKind, peer []*x509.Certificate) error {
		if len(peer) == 0 && k != protocol.KindEnrol {
			return protocol.Errorf(protocol.CodeUnauthorized, "stream kind %s needs a client certificate", k)
		}
		return nil
	}
	agent, ctrl := pair(t, agentConfig(p, false), ctrlCfg, p)
	require.Empty(t, ctrl.PeerCertificates())
	echoStreams(t, ctrl)

	enrol, err := agent.Open(t.Context(), protocol.KindEnrol)
	require.NoError(t, err)
	roundTrip(t, enrol, []byte("token please"))

	for _, k := range []protocol.StreamKind{protocol.KindControl, protocol.KindData, protocol.KindRestore, protocol.KindHashes, protocol.KindLog} {
		st, err := agent.Open(t.Context(), k)
		require.NoError(t, err)
		err = readRefusal(t, st)
		var pe *protocol.Error
		require.ErrorAs(t, err, &pe, "kind %s", k)
		require.Equal(t, protocol.CodeUnauthorized, pe.Code)
		require.ErrorIs(t, err, protocol.ErrUnauthorized)
		require.Equal(t, "stream kind "+k.String()+" needs a client certificate", pe.Message)
		_ = st.Close()
	}

	// The session lives on.
	require.NoError(t, agent.Err())
	enrol, err = agent.Open(t.Context(), protocol.KindEnrol)
	require.NoError(t, err)
	roundTrip(t, enrol, []byte("again"))
}

func TestGatePlainErrorIsUnauthorized(t *testing.T) {
	p := newPKI(t)
	ctrlCfg := controllerConfig()
	ctrlCfg.AllowKind = func(protocol.StreamKind, []*x509.Certificate) error { return errors.New("agent revoked") }
	agent, _ := pair(t, agentConfig(p, true), ctrlCfg, p)
	st, err := agent.Open(t.Context(), protocol.KindControl)
	require.NoError(t, err)
	err = readRefusal(t, st)
	require.ErrorIs(t, err, protocol.ErrUnauthorized)
	require.Equal(t, "agent revoked", err.Error())
}

func TestUnknownKindIsRefusedSessionLivesOn(t *testing.T) {
	p := newPKI(t)
	agent, ctrl := pair(t, agentConfig(p, true), controllerConfig(), p)
	echoStreams(t, ctrl)
	st, err := agent.Open(t.Context(), protocol.StreamKind(200))
	require.NoError(t, err)
	err = readRefusal(t, st)
	require.ErrorIs(t, err, protocol.ErrInvalid)
	require.Contains(t, err.Error(), "unknown stream kind 200")

	ok, err := agent.Open(t.Context(), protocol.KindData)
	require.NoError(t, err)
	roundTrip(t, ok, []byte("still here"))
}

func TestBacklogFullIsBusy(t *testing.T) {
	p := newPKI(t)
	ctrlCfg := controllerConfig()
	ctrlCfg.AcceptBacklog = 1
	agent, ctrl := pair(t, agentConfig(p, true), ctrlCfg, p)
	results := make(chan error, 3)
	for i := 0; i < 3; i++ {
		st, err := agent.Open(t.Context(), protocol.KindData)
		require.NoError(t, err)
		go func() {
			_, _, err := frame.NewReader(st, 0).Next()
			results <- err
		}()
	}
	// Nobody calls Accept yet: one stream waits, the other two are refused.
	for range 2 {
		var err error
		within(t, 10*time.Second, "a busy refusal", func() { err = <-results })
		require.ErrorIs(t, err, protocol.ErrBusy)
		require.True(t, protocol.Retryable(err))
	}
	got, err := ctrl.Accept(t.Context())
	require.NoError(t, err)
	require.Equal(t, protocol.KindData, got.Kind())
	require.NoError(t, got.Close())
	within(t, 10*time.Second, "the queued stream's end", func() { err = <-results })
	require.ErrorIs(t, err, io.EOF, "the queued stream was accepted, then closed cleanly")
}

func TestResetDeliversError(t *testing.T) {
	p := newPKI(t)
	agent, ctrl := pair(t, agentConfig(p, true), controllerConfig(), p)
	st, err := agent.Open(t.Context(), protocol.KindData)
	require.NoError(t, err)
	fw := frame.NewWriter(st)
	require.NoError(t, fw.Write(1, []byte("manifest")))
	require.NoError(t, fw.Flush())

	in, err := ctrl.Accept(t.Context())
	require.NoError(t, err)
	fr := frame.NewReader(in, 0)
	typ, payload, err := fr.Next()
	require.NoError(t, err)
	require.Equal(t, uint8(1), typ)
	require.Equal(t, "manifest", string(payload))
	in.Reset(protocol.Errorf(protocol.CodeConflict, "cycle 4 is already complete"))

	_, _, err = frame.NewReader(st, 0).Next()
	require.ErrorIs(t, err, protocol.ErrConflict)
	require.Equal(t, "cycle 4 is already complete", err.Error())
	_, err = in.Write([]byte("x"))
	require.ErrorIs(t, err, net.ErrClosed)
}

func TestCloseWakesBlockedCalls(t *testing.T) {
	p := newPKI(t)
	agent, ctrl := pair(t, agentConfig(p, true), controllerConfig(), p)
	st, err := agent.Open(t.Context(), protocol.KindData)
	require.NoError(t, err)
	_, err = ctrl.Accept(t.Context()) // accepted, never read: writes block on the window
	require.NoError(t, err)

	readErr := make(chan error, 1)
	writeErr := make(chan error, 1)
	go func() { _, err := st.Read(make([]byte, 10)); readErr <- err }()
	go func() { _, err := st.Write(make([]byte, 8<<20)); writeErr <- err }()
	require.NoError(t, st.Close())
	within(t, 5*time.Second, "blocked read and write after Close", func() {
		require.ErrorIs(t, <-readErr, net.ErrClosed)
		require.ErrorIs(t, <-writeErr, net.ErrClosed)
	})
	require.NoError(t, st.Close(), "closing twice is harmless")
}

func TestDeadline(t *testing.T) {
	p := newPKI(t)
	agent, _ := pair(t, agentConfig(p, true), controllerConfig(), p)
	st, err := agent.Open(t.Context(), protocol.KindData)
	require.NoError(t, err)
	require.NoError(t, st.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	_, err = st.Read(make([]byte, 1))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout())
	require.NoError(t, agent.Err(), "a deadline does not end the session")
}

// Sessions and streams leave no goroutine behind once closed.
func TestNoGoroutinesLeftBehind(t *testing.T) {
	base := runtime.NumGoroutine()
	p := newPKI(t)
	func() {
		c := listen(t, p.ca.ServerConfig(p.server), controllerConfig())
		agent, err := Dial(t.Context(), c.addr(), agentConfig(p, true))
		require.NoError(t, err)
		ctrl, err := c.next(t)
		require.NoError(t, err)
		echoStreams(t, ctrl)
		for i := 0; i < 5; i++ {
			st, err := agent.Open(t.Context(), protocol.KindData)
			require.NoError(t, err)
			roundTrip(t, st, []byte("x"))
			require.NoError(t, st.Close())
		}
		refused, err := agent.Open(t.Context(), protocol.StreamKind(99))
		require.NoError(t, err)
		_ = readRefusal(t, refused)
		require.NoError(t, agent.Close())
		<-ctrl.Done()
		_ = c.ln.Close()
	}()
	require.Eventually(t, func() bool { return runtime.NumGoroutine() <= base+1 }, 10*time.Second, 10*time.Millisecond,
		"goroutines: %d before, %d after", base, runtime.NumGoroutine())
}
