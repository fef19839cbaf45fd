package session

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
)

// TestThroughput measures session throughput on the loopback beside raw
// TCP and plain TLS in the same run, and prints a table. It is a benchmark,
// not a test: it runs only with FERRY_BENCH=1 (scripts/bench-protocol.sh),
// FERRY_BENCH_BYTES bytes per run (default 512 MiB) and the median of
// FERRY_BENCH_RUNS runs (default 5). It asserts nothing about speed.
func TestThroughput(t *testing.T) {
	if os.Getenv("FERRY_BENCH") != "1" {
		t.Skip("a benchmark: set FERRY_BENCH=1 (make bench runs it)")
	}
	total := envInt(t, "FERRY_BENCH_BYTES", 512<<20)
	runs := envInt(t, "FERRY_BENCH_RUNS", 5)
	p := newPKI(t)

	type benchCase struct {
		name string
		run  func(t *testing.T, n int) time.Duration
	}
	window := func(w uint32) Config {
		c := DefaultConfig()
		c.StreamWindow = w
		return c
	}
	cases := []benchCase{
		{"raw TCP, 1 connection", func(t *testing.T, n int) time.Duration { return benchTCP(t, n) }},
		{"TLS 1.3, 1 connection", func(t *testing.T, n int) time.Duration { return benchTLS(t, p, n) }},
		{"TLS+yamux, 1 stream", func(t *testing.T, n int) time.Duration { return benchSession(t, p, DefaultConfig(), 1, n) }},
		{"TLS+yamux, 4 streams", func(t *testing.T, n int) time.Duration { return benchSession(t, p, DefaultConfig(), 4, n) }},
		{"TLS+yamux, 1 stream, 256 KiB window", func(t *testing.T, n int) time.Duration { return benchSession(t, p, window(256<<10), 1, n) }},
		{"TLS+yamux, 1 stream, 4 MiB window", func(t *testing.T, n int) time.Duration { return benchSession(t, p, window(4<<20), 1, n) }},
	}
	medians := make([]float64, len(cases))
	fmt.Printf("\n# protocol throughput, loopback, %d MiB per run, median of %d runs (MB/s = 10^6 bytes/s)\n\n", total>>20, runs)
	fmt.Printf("| case | median MB/s | min | max | vs raw TCP | vs TLS |\n|---|---:|---:|---:|---:|---:|\n")
	for i, c := range cases {
		var rates []float64
		for r := 0; r < runs; r++ {
			d := c.run(t, total)
			rates = append(rates, float64(total)/d.Seconds()/1e6)
		}
		slices.Sort(rates)
		medians[i] = rates[len(rates)/2]
		vsTLS := "—"
		if i >= 1 {
			vsTLS = fmt.Sprintf("%.2f", medians[i]/medians[1])
		}
		fmt.Printf("| %s | %.0f | %.0f | %.0f | %.2f | %s |\n", c.name, medians[i], rates[0], rates[len(rates)-1], medians[i]/medians[0], vsTLS)
	}
	fmt.Println()
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, name)
	return n
}

// send writes n bytes in 256 KiB writes.
func send(w io.Writer, n int) error {
	buf := make([]byte, 256<<10)
	for n > 0 {
		k := min(n, len(buf))
		if _, err := w.Write(buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// timeTransfer times sending n bytes on w until the receiver, reading r,
// has them all.
func timeTransfer(t *testing.T, w io.Writer, r io.Reader, n int) time.Duration {
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, r, int64(n))
		done <- err
	}()
	start := time.Now()
	require.NoError(t, send(w, n))
	require.NoError(t, <-done)
	return time.Since(start)
}

func benchTCP(t *testing.T, n int) time.Duration {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	s := <-acc
	require.NotNil(t, s)
	defer s.Close()
	return timeTransfer(t, c, s, n)
}

func benchTLS(t *testing.T, p *pki, n int) time.Duration {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", p.ca.ServerConfig(p.server))
	require.NoError(t, err)
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			err = c.(*tls.Conn).Handshake()
		}
		if err != nil {
			acc <- nil
			return
		}
		acc <- c
	}()
	cfg := p.ca.ClientConfig(&p.client)
	cfg.NextProtos = []string{protocol.ALPN}
	c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
	require.NoError(t, err)
	defer c.Close()
	s := <-acc
	require.NotNil(t, s)
	defer s.Close()
	return timeTransfer(t, c, s, n)
}

func benchSession(t *testing.T, p *pki, base Config, streams, n int) time.Duration {
	agentCfg, ctrlCfg := base, base
	agentCfg.Name, ctrlCfg.Name = "agent", "controller"
	agentCfg.TLS = p.ca.ClientConfig(&p.client)
	c := listen(t, p.ca.ServerConfig(p.server), ctrlCfg)
	agent, err := Dial(context.Background(), c.addr(), agentCfg)
	require.NoError(t, err)
	defer agent.Close()
	ctrl, err := c.next(t)
	require.NoError(t, err)
	defer ctrl.Close()

	var senders, receivers []*Stream
	for i := 0; i < streams; i++ {
		st, err := agent.Open(context.Background(), protocol.KindData)
		require.NoError(t, err)
		in, err := ctrl.Accept(context.Background())
		require.NoError(t, err)
		senders, receivers = append(senders, st), append(receivers, in)
	}
	per := n / streams
	var wg sync.WaitGroup
	errs := make(chan error, 2*streams)
	start := time.Now()
	for i := range senders {
		wg.Go(func() {
			if _, err := io.CopyN(io.Discard, receivers[i], int64(per)); err != nil {
				errs <- err
			}
		})
		wg.Go(func() {
			if err := send(senders[i], per); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	d := time.Since(start)
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	return d
}
