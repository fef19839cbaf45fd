package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/controller/api"
)

// observed is a controller serving the TLS admin listener too, with an
// agent the test can stop and start again.
type observed struct {
	*served
	https  string // the TLS admin listener's URL
	token  string // its admin token
	caFile string
	agent  *stoppableAgent
}

// observedController starts `ferry serve --admin-listen`, one agent
// "host1", and protects machine web1 (one 1 MiB image) under a policy that
// makes a point every rpEvery with the given RPO threshold; extra are
// more `ferry serve` flags.
func observedController(t *testing.T, rpEvery, threshold string, extra ...string) *observed {
	t.Helper()
	data := t.TempDir()
	s, _ := serveData(t, data, append([]string{"--admin-listen", "127.0.0.1:0"}, extra...)...)
	o := &observed{served: s, https: s.admin, caFile: filepath.Join(data, "pki", "ca.crt")}
	o.admin = filepath.Join(data, "a.sock") // the CLI goes through the socket
	tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
	require.NoError(t, err)
	o.token = strings.TrimSpace(string(tok))
	o.agent = o.enrolAgent(t, "host1")
	o.agent.start(t)
	require.Eventually(t, func() bool {
		code, stdout, _ := o.cli(t, "--json", "agents", "list")
		var as []api.Agent
		return code == exitOK && json.Unmarshal([]byte(stdout), &as) == nil && len(as) == 1 && as[0].Connected
	}, 30*time.Second, 50*time.Millisecond, "the agent never showed as connected")
	img := filepath.Join(t.TempDir(), "web1.img")
	require.NoError(t, os.WriteFile(img, []byte(strings.Repeat("ferry observe ", 1<<16)), 0o600))
	code, _, stderr := o.cli(t, "policies", "create", "p", "--rp-every", rpEvery, "--rpo-threshold", threshold, "--block-size", "64KiB")
	require.Equal(t, exitOK, code, stderr)
	code, _, stderr = o.cli(t, "protect", "web1", "--agent", "host1", "--disk", "d="+img, "--policy", "p")
	require.Equal(t, exitOK, code, stderr)
	require.Eventually(t, func() bool { return o.machine(t).RPOSeconds != nil }, time.Minute, 100*time.Millisecond, "no point of web1")
	return o
}

func (o *observed) machine(t *testing.T) api.Machine {
	t.Helper()
	code, stdout, stderr := o.cli(t, "--json", "machines", "list")
	require.Equal(t, exitOK, code, stderr)
	var ms []api.Machine
	require.NoError(t, json.Unmarshal([]byte(stdout), &ms))
	require.Len(t, ms, 1)
	return ms[0]
}

// stoppableAgent is an enrolled in-process agent that can be stopped (its
// machines stop replicating) and started again on the same state.
type stoppableAgent struct {
	stateDir string
	cancel   context.CancelFunc
	done     chan error
}

func (o *observed) enrolAgent(t *testing.T, name string) *stoppableAgent {
	t.Helper()
	code, stdout, stderr := o.cli(t, "--json", "tokens", "create")
	require.Equal(t, exitOK, code, stderr)
	var tok api.Token
	require.NoError(t, json.Unmarshal([]byte(stdout), &tok))
	a := &stoppableAgent{stateDir: filepath.Join(t.TempDir(), "agent")}
	_, err := agent.Enroll(context.Background(), agent.EnrollConfig{Controller: o.served.agent, Token: tok.Token, Name: name, StateDir: a.stateDir})
	require.NoError(t, err)
	t.Cleanup(func() { a.stop(t) })
	return a
}

func (a *stoppableAgent) start(t *testing.T) {
	t.Helper()
	ag, err := agent.New(agent.Config{StateDir: a.stateDir, Streams: 2, MaxBackoff: time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan error, 1)
	go func() { a.done <- ag.Run(ctx) }()
}

func (a *stoppableAgent) stop(t *testing.T) {
	t.Helper()
	if a.cancel == nil {
		return
	}
	a.cancel()
	select {
	case err := <-a.done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Error("the agent did not stop within 30 s")
	}
	a.cancel = nil
}

// scrape GETs /metrics from the TLS admin listener with token ("" for
// none) and returns the status and body.
func (o *observed) scrape(t *testing.T, token string) (int, string) {
	t.Helper()
	pem, err := os.ReadFile(o.caFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pem))
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	req, err := http.NewRequest("GET", o.https+"/metrics", nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}
