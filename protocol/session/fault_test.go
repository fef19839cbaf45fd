package session

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/faultnet"
)

// blocked starts, on each stream, one reader waiting for bytes that never
// come and one writer blocked on a full window (the peer does not read),
// and returns the channel their errors arrive on.
func blocked(streams []*Stream) <-chan error {
	errc := make(chan error, 2*len(streams))
	for _, st := range streams {
		go func() {
			_, err := io.Copy(io.Discard, st)
			if err == nil {
				err = errors.New("read ended cleanly")
			}
			errc <- err
		}()
		go func() {
			buf := make([]byte, 1<<20)
			for {
				if _, err := st.Write(buf); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	return errc
}

// openMany opens n streams each way and returns every end.
func openMany(t *testing.T, agent, ctrl *Session, n int) (agentSide, ctrlSide []*Stream) {
	t.Helper()
	for i := 0; i < n; i++ {
		a, err := agent.Open(t.Context(), protocol.KindData)
		require.NoError(t, err)
		c, err := ctrl.Accept(t.Context())
		require.NoError(t, err)
		c2, err := ctrl.Open(t.Context(), protocol.KindRestore)
		require.NoError(t, err)
		a2, err := agent.Accept(t.Context())
		require.NoError(t, err)
		agentSide = append(agentSide, a, a2)
		ctrlSide = append(ctrlSide, c, c2)
	}
	return agentSide, ctrlSide
}

// expectAllFail waits for n errors, each of which must say the session was
// lost, within bound.
func expectAllFail(t *testing.T, errc <-chan error, n int, bound time.Duration) {
	t.Helper()
	deadline := time.After(bound)
	for i := 0; i < n; i++ {
		select {
		case err := <-errc:
			requireLost(t, err)
			var se *StreamError
			require.ErrorAs(t, err, &se)
		case <-deadline:
			t.Fatalf("only %d of %d blocked stream calls returned within %v", i, n, bound)
		}
	}
}

// The TCP socket under the session is closed: every blocked read and write
// on either side returns an error saying the session was lost.
func TestSocketClosedUnderneath(t *testing.T) {
	p := newPKI(t)
	c := listen(t, p.ca.ServerConfig(p.server), shortKeepalive(controllerConfig()))
	raw, err := net.Dial("tcp", c.addr())
	require.NoError(t, err)
	agent, err := Client(t.Context(), raw, shortKeepalive(agentConfig(p, true)))
	require.NoError(t, err)
	defer agent.Close()
	ctrl, err := c.next(t)
	require.NoError(t, err)

	agentSide, ctrlSide := openMany(t, agent, ctrl, 3)
	agentErrs, ctrlErrs := blocked(agentSide), blocked(ctrlSide)

	start := time.Now()
	require.NoError(t, raw.Close())
	expectAllFail(t, agentErrs, 2*len(agentSide), 5*time.Second)
	expectAllFail(t, ctrlErrs, 2*len(ctrlSide), 5*time.Second)
	t.Logf("all %d blocked calls failed within %v", 2*(len(agentSide)+len(ctrlSide)), time.Since(start))

	requireLost(t, agent.Err())
	requireLost(t, ctrl.Err())
	_, err = agent.Open(t.Context(), protocol.KindData)
	requireLost(t, err)
	_, err = ctrl.Accept(t.Context())
	requireLost(t, err)
}

// A proxy between the two cuts the connection after N bytes while data
// flows: both sides fail every stream.
func TestProxyCutsAfterBytes(t *testing.T) {
	p := newPKI(t)
	c := listen(t, p.ca.ServerConfig(p.server), shortKeepalive(controllerConfig()))
	proxy, err := faultnet.Listen(c.addr(), nil)
	require.NoError(t, err)
	defer proxy.Close()

	agent, err := Dial(t.Context(), proxy.Addr(), shortKeepalive(agentConfig(p, true)))
	require.NoError(t, err)
	defer agent.Close()
	ctrl, err := c.next(t)
	require.NoError(t, err)
	agentSide, ctrlSide := openMany(t, agent, ctrl, 2)

	// Data flows on one more stream until the cut; the others block.
	flow, err := agent.Open(t.Context(), protocol.KindData)
	require.NoError(t, err)
	sink, err := ctrl.Accept(t.Context())
	require.NoError(t, err)
	var wg sync.WaitGroup
	var flowErr, sinkErr error
	wg.Go(func() {
		buf := make([]byte, 64<<10)
		for flowErr == nil {
			_, flowErr = flow.Write(buf)
		}
	})
	wg.Go(func() { _, sinkErr = io.Copy(io.Discard, sink) })

	agentErrs, ctrlErrs := blocked(agentSide), blocked(ctrlSide)
	proxy.CutAfter(300 << 10) // mid-stream, in the middle of TLS records
	expectAllFail(t, agentErrs, 2*len(agentSide), 5*time.Second)
	expectAllFail(t, ctrlErrs, 2*len(ctrlSide), 5*time.Second)
	within(t, 5*time.Second, "the flowing stream", wg.Wait)
	requireLost(t, flowErr)
	requireLost(t, sinkErr)
	up, down := proxy.Bytes()
	require.LessOrEqual(t, up+down, int64(2<<20), "the cut happened early")
}

// A stalled link (nothing forwarded, nothing closed) is detected by the
// keepalive: every call returns within about interval + timeout.
func TestStalledLinkEndsByKeepalive(t *testing.T) {
	p := newPKI(t)
	c := listen(t, p.ca.ServerConfig(p.server), shortKeepalive(controllerConfig()))
	proxy, err := faultnet.Listen(c.addr(), nil)
	require.NoError(t, err)
	defer proxy.Close()
	agent, err := Dial(t.Context(), proxy.Addr(), shortKeepalive(agentConfig(p, true)))
	require.NoError(t, err)
	defer agent.Close()
	ctrl, err := c.next(t)
	require.NoError(t, err)
	agentSide, ctrlSide := openMany(t, agent, ctrl, 2)
	agentErrs, ctrlErrs := blocked(agentSide), blocked(ctrlSide)

	start := time.Now()
	proxy.Stall()
	cfg := shortKeepalive(Config{})
	bound := 10 * (cfg.KeepaliveInterval + cfg.KeepaliveTimeout)
	expectAllFail(t, agentErrs, 2*len(agentSide), bound)
	expectAllFail(t, ctrlErrs, 2*len(ctrlSide), bound)
	t.Logf("stall detected after %v (interval %v, timeout %v)", time.Since(start), cfg.KeepaliveInterval, cfg.KeepaliveTimeout)
}

// Close on one side is an orderly end: this side's error is ErrClosed, the
// peer's a LostError saying the peer closed.
func TestOrderlyClose(t *testing.T) {
	p := newPKI(t)
	agent, ctrl := pair(t, agentConfig(p, true), controllerConfig(), p)
	agentSide, ctrlSide := openMany(t, agent, ctrl, 1)
	agentErrs, ctrlErrs := blocked(agentSide), blocked(ctrlSide)

	within(t, 5*time.Second, "Close", func() { require.NoError(t, agent.Close()) })
	require.ErrorIs(t, agent.Err(), ErrClosed)
	for range 2 * len(agentSide) {
		require.ErrorIs(t, <-agentErrs, ErrClosed)
	}
	within(t, 5*time.Second, "the peer noticing", func() { <-ctrl.Done() })
	requireLost(t, ctrl.Err())
	require.ErrorIs(t, ctrl.Err(), io.EOF, "close_notify arrived: %v", ctrl.Err())
	require.Contains(t, ctrl.Err().Error(), "closed by the peer")
	expectAllFail(t, ctrlErrs, 2*len(ctrlSide), 5*time.Second)
	_, err := agent.Open(context.Background(), protocol.KindData)
	require.ErrorIs(t, err, ErrClosed)
}

func shortKeepalive(cfg Config) Config {
	cfg.KeepaliveInterval = 100 * time.Millisecond
	cfg.KeepaliveTimeout = 300 * time.Millisecond
	return cfg
}
