package session

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
)

// countingConn counts the writes that reach the socket and their bytes.
type countingConn struct {
	net.Conn
	writes, bytes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	c.bytes.Add(int64(len(p)))
	return c.Conn.Write(p)
}

// CloseWrite keeps the TCP half-close the session's orderly close uses.
func (c *countingConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// A stream write of 8 MiB leaves in a few dozen socket writes rather than
// one per 16 KiB TLS record (over 512), and arrives intact.
func TestSessionWritesGatherTLSRecords(t *testing.T) {
	p := newPKI(t)
	c := listen(t, p.ca.ServerConfig(p.server), controllerConfig())
	raw, err := net.Dial("tcp", c.addr())
	require.NoError(t, err)
	counted := &countingConn{Conn: raw}
	agent, err := Client(context.Background(), counted, agentConfig(p, true))
	require.NoError(t, err)
	t.Cleanup(func() { _ = agent.Close() })
	ctrl, err := c.next(t)
	require.NoError(t, err)

	const size = 8 << 20
	payload := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range payload {
		payload[i] = byte(rng.Uint32())
	}
	st, err := agent.Open(context.Background(), protocol.KindData)
	require.NoError(t, err)
	in, err := ctrl.Accept(context.Background())
	require.NoError(t, err)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(in, size))
		got <- b
	}()
	w0, b0 := counted.writes.Load(), counted.bytes.Load()
	_, err = st.Write(payload)
	require.NoError(t, err)
	require.True(t, bytes.Equal(payload, <-got), "the payload arrived changed")
	writes, sent := counted.writes.Load()-w0, counted.bytes.Load()-b0
	require.GreaterOrEqual(t, sent, int64(size), "the payload crossed the counted connection")
	records := size / (16 << 10)
	t.Logf("%d bytes in %d socket writes (%d TLS records at least)", sent, writes, records)
	require.Less(t, writes, int64(records/8), "the records of one write leave together")
}

// Uncorked, a Coalescer writes straight through: the handshake and the
// controller's HTTP connections see a plain connection.
func TestCoalescerWritesThroughUncorked(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	co := Coalesce(a)
	go func() { _, _ = co.Write([]byte("hello")) }()
	buf := make([]byte, 5)
	_, err := io.ReadFull(b, buf)
	require.NoError(t, err)
	require.Equal(t, "hello", string(buf))

	// Corked, nothing leaves until uncork, then all of it in one write.
	co.cork()
	n, err := co.Write([]byte("one "))
	require.NoError(t, err)
	require.Equal(t, 4, n)
	_, err = co.Write([]byte("two"))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- co.uncork() }()
	buf = make([]byte, 16)
	n, err = b.Read(buf) // net.Pipe delivers one Write per Read
	require.NoError(t, err)
	require.Equal(t, "one two", string(buf[:n]))
	require.NoError(t, <-done)
}

// An orderly close while another goroutine's write is corked: what was
// gathered (whole TLS records, the close_notify among them) reaches the
// peer before the FIN.
func TestCoalescerHalfCloseSendsWhatWasGathered(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer raw.Close()
	co := Coalesce(raw)
	co.cork()
	_, err = co.Write([]byte("gathered record"))
	require.NoError(t, err)
	require.NoError(t, co.CloseWrite())
	require.Equal(t, "gathered record", string(<-got))
}
