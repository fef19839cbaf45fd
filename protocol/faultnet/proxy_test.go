package faultnet

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// echo serves a loopback echo server for the test.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestForwardAndCount(t *testing.T) {
	p, err := Listen(echo(t), nil)
	require.NoError(t, err)
	defer p.Close()
	c := dial(t, p)
	msg := bytes.Repeat([]byte("ferry"), 10000)
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, len(msg))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, msg, got)
	up, down := p.Bytes()
	require.Equal(t, int64(len(msg)), up)
	require.Equal(t, int64(len(msg)), down)
}

func TestCutAfter(t *testing.T) {
	p, err := Listen(echo(t), nil)
	require.NoError(t, err)
	defer p.Close()
	c := dial(t, p)
	p.CutAfter(150) // 100 up + 50 of the echo down, then the cut
	_, err = c.Write(make([]byte, 100))
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	got, err := io.ReadAll(c)
	require.Len(t, got, 50, "exactly the budget passed")
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the connection was closed, not left hanging: %v", err)
	up, down := p.Bytes()
	require.Equal(t, int64(100), up)
	require.Equal(t, int64(50), down)
}

func TestStallThenCut(t *testing.T) {
	p, err := Listen(echo(t), nil)
	require.NoError(t, err)
	defer p.Close()
	c := dial(t, p)
	p.Stall()
	_, err = c.Write([]byte("hello"))
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
	_, err = c.Read(make([]byte, 5))
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout(), "a stalled link delivers nothing")

	p.Resume()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	buf := make([]byte, 5)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, "hello", string(buf))

	p.Stall()
	_, err = c.Write([]byte("again"))
	require.NoError(t, err)
	p.Cut()
	_, err = c.Read(buf)
	require.Error(t, err, "a cut ends a stalled connection")
	require.False(t, errors.As(err, &ne) && ne.Timeout())
}
