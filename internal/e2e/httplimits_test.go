package e2e

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// httpsConn opens an HTTPS connection (ALPN http/1.1) to the agent port
// from the loopback address src and makes one keep-alive GET /healthz. It
// returns the connection when the controller answered 200.
func httpsConn(addr string, src net.IP) (*tls.Conn, *bufio.Reader, error) {
	return httpsGet(addr, src, "/healthz", http.StatusOK)
}

// httpsGet is httpsConn for any path and expected status.
func httpsGet(addr string, src net.IP, path string, status int) (*tls.Conn, *bufio.Reader, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 10 * time.Second}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}) //nolint:gosec // any controller will do
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	req, _ := http.NewRequest("GET", "https://ferry"+path, nil)
	if err := req.Write(tc); err != nil {
		tc.Close()
		return nil, nil, err
	}
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		tc.Close()
		return nil, nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != status || resp.Close {
		tc.Close()
		return nil, nil, errors.New(resp.Status)
	}
	_ = tc.SetDeadline(time.Time{})
	return tc, br, nil
}

// TestAgentPortHTTPLimits: the install endpoints share the agent port and
// need no credentials, so their connections are charged to the
// pre-authentication budget (a quarter of 24 MiB per source address, 64 KiB
// a connection: 96), and a keep-alive connection left idle is closed after
// the idle timeout (30 s). An enrolled agent's session is not affected.
func TestAgentPortHTTPLimits(t *testing.T) {
	c := StartController(t)
	EnrollAgent(t, c, c.Addr, "good")
	src := net.IPv4(127, 0, 0, 77)

	const tries = 120
	var mu sync.Mutex
	var held []*tls.Conn
	var wg sync.WaitGroup
	for range tries {
		wg.Go(func() {
			tc, _, err := httpsConn(c.Addr, src)
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, tc)
			mu.Unlock()
		})
	}
	wg.Wait()
	t.Logf("%d of %d idle keep-alive connections from %s were served", len(held), tries, src)
	require.Equal(t, 96, len(held), "one address holds at most 96 install-endpoint connections")
	for _, tc := range held {
		tc.Close()
	}
	// The places are returned when the connections close.
	require.Eventually(t, func() bool {
		tc, _, err := httpsConn(c.Addr, src)
		if err == nil {
			tc.Close()
		}
		return err == nil
	}, 10*time.Second, 100*time.Millisecond)

	// An idle keep-alive connection is closed by the controller.
	tc, br, err := httpsConn(c.Addr, src)
	require.NoError(t, err)
	defer tc.Close()
	start := time.Now()
	_ = tc.SetReadDeadline(time.Now().Add(60 * time.Second))
	_, err = br.ReadByte()
	idle := time.Since(start)
	require.Error(t, err)
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the controller kept the idle connection open for 60 s")
	t.Logf("idle connection closed by the controller after %v (%v)", idle.Round(time.Millisecond), err)
	require.Greater(t, idle, 20*time.Second, "not before the idle timeout")

	var agents []struct {
		Connected bool `json:"connected"`
	}
	c.JSON(&agents, "agents", "list")
	require.Len(t, agents, 1)
	require.True(t, agents[0].Connected)
}

// TestAdminListenerLimits: the TCP admin port (--admin-listen) answers
// anyone until the token is checked on each request, so its connections
// have their own budget: 16 from one address (a quarter of 4 MiB at 64 KiB
// a connection). The Unix admin socket is not limited.
func TestAdminListenerLimits(t *testing.T) {
	c := StartController(t, "--admin-listen", "127.0.0.1:0")
	m := c.Proc.WaitOutput(regexp.MustCompile(`admin https://(\S+)\)`), 30*time.Second)
	addr := m[1]
	src := net.IPv4(127, 0, 0, 78)
	const tries = 30
	var mu sync.Mutex
	var held []*tls.Conn
	var wg sync.WaitGroup
	for range tries {
		wg.Go(func() {
			tc, _, err := httpsGet(addr, src, "/v1/agents", http.StatusUnauthorized)
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, tc)
			mu.Unlock()
		})
	}
	wg.Wait()
	t.Logf("%d of %d keep-alive connections without a token from %s were served", len(held), tries, src)
	require.Equal(t, 16, len(held), "one address holds at most 16 admin connections")
	for _, tc := range held {
		tc.Close()
	}
	c.MustFerry("agents", "list") // the Unix socket is not limited
	require.Eventually(t, func() bool {
		tc, _, err := httpsGet(addr, src, "/v1/agents", http.StatusUnauthorized)
		if err == nil {
			tc.Close()
		}
		return err == nil
	}, 10*time.Second, 100*time.Millisecond, "places are returned when connections close")
}
