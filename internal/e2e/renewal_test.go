package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
)

// withCert is an enrolled agent's TLS configuration presenting certPEM
// (with the agent's own key) instead of its current certificate.
func withCert(t *testing.T, st *agent.State, stateDir string, certPEM []byte) *tls.Config {
	t.Helper()
	keyPEM, err := os.ReadFile(filepath.Join(stateDir, "key.pem"))
	require.NoError(t, err)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	conf := st.TLSConfig()
	conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	return conf
}

// TestRenewalRetiresOldCertificate: an agent renews its certificate over a
// real TLS session; once it uses the new certificate, the old one opens no
// session any more (refused as revoked), while the new one works. Until
// the new certificate is first used, the old one stays valid, so a renewal
// whose answer is lost never locks the agent out.
func TestRenewalRetiresOldCertificate(t *testing.T) {
	c := StartController(t)
	stateDir := filepath.Join(t.TempDir(), "renewer")
	out, err := exec.Command(filepath.Join(c.Bin, "ferry-agent"), "enroll", "--controller", c.Addr, "--token", c.Token(),
		"--name", "renewer", "--state-dir", stateDir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	st, err := agent.LoadState(stateDir)
	require.NoError(t, err)
	oldPEM, err := os.ReadFile(filepath.Join(stateDir, "cert.pem"))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	call := func(conf *tls.Config) error {
		sess, err := session.Dial(ctx, c.Addr, session.Config{TLS: conf, Name: "agent"})
		if err != nil {
			return err
		}
		defer sess.Close()
		var resp msg.HelloResponse
		return rpc.Call(ctx, sess, msg.MethodHello, msg.HelloRequest{Version: "test", Platform: "linux/amd64", Hostname: "renewer"}, &resp)
	}
	require.NoError(t, call(withCert(t, st, stateDir, oldPEM)), "the enrolment certificate works")

	// Renew over a session authenticated by the old certificate.
	sess, err := session.Dial(ctx, c.Addr, session.Config{TLS: withCert(t, st, stateDir, oldPEM), Name: "agent"})
	require.NoError(t, err)
	pub, err := x509.MarshalPKIXPublicKey(st.Certificate().PublicKey)
	require.NoError(t, err)
	var renewed msg.RenewResponse
	require.NoError(t, rpc.Call(ctx, sess, msg.MethodRenew, msg.RenewRequest{PublicKey: pub}, &renewed))
	sess.Close()
	blk, _ := pem.Decode(renewed.Cert)
	require.NotNil(t, blk)
	newCert, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)
	require.NotEqual(t, st.Certificate().SerialNumber, newCert.SerialNumber, "a new certificate")

	require.NoError(t, call(withCert(t, st, stateDir, oldPEM)), "before the new certificate is used, the old one still works")
	require.NoError(t, call(withCert(t, st, stateDir, renewed.Cert)), "the new certificate works")
	err = call(withCert(t, st, stateDir, oldPEM))
	require.Error(t, err, "after the renewal took effect, the old certificate must be refused")
	require.ErrorIs(t, err, protocol.ErrUnauthorized, "%v", err)
	require.NoError(t, call(withCert(t, st, stateDir, renewed.Cert)), "the new certificate still works")

	// A retired certificate gets no more than a peer without one: a third
	// stream ends its session (docs/limits.md).
	sess, err = session.Dial(ctx, c.Addr, session.Config{TLS: withCert(t, st, stateDir, oldPEM), Name: "agent"})
	require.NoError(t, err)
	defer sess.Close()
	for range 3 {
		_, _ = sess.Open(ctx, protocol.KindControl)
	}
	select {
	case <-sess.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the session of a retired certificate outlived its stream limit")
	}
}

// TestAgentReconnectsAfterRenewal: an agent (in process, its clock moved
// to where less than a third of its certificate's lifetime is left) renews
// at connect, writes the new certificate, reconnects with it, and so
// retires the old one at the controller (a real ferry serve): the old
// certificate opens no session afterwards, and the agent stays connected.
func TestAgentReconnectsAfterRenewal(t *testing.T) {
	c := StartController(t)
	stateDir := filepath.Join(t.TempDir(), "renewer")
	out, err := exec.Command(filepath.Join(c.Bin, "ferry-agent"), "enroll", "--controller", c.Addr, "--token", c.Token(),
		"--name", "renewer", "--state-dir", stateDir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	st, err := agent.LoadState(stateDir)
	require.NoError(t, err)
	oldPEM, err := os.ReadFile(filepath.Join(stateDir, "cert.pem"))
	require.NoError(t, err)
	old := st.Certificate()
	life := old.NotAfter.Sub(old.NotBefore)
	shift := time.Until(old.NotAfter.Add(-life / 4)) // a quarter of the lifetime left
	// The agent sees the shifted clock until its certificate file changes:
	// the new certificate must not look due for renewal in turn.
	now := func() time.Time {
		b, err := os.ReadFile(filepath.Join(stateDir, "cert.pem"))
		if err == nil && string(b) == string(oldPEM) {
			return time.Now().Add(shift)
		}
		return time.Now()
	}
	require.True(t, st.NeedsRenewal(now()), "the shifted clock makes the certificate due")

	cfg := agent.DefaultConfig()
	cfg.StateDir, cfg.Now = stateDir, now
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.MaxBackoff = 2 * time.Second
	ag, err := agent.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	// Probing with the old certificate before it is retired would replace
	// the agent's session (it is the same agent): wait for the controller
	// to say the new one is in use.
	c.Proc.WaitOutput(regexp.MustCompile(`renewed certificate in use: older ones revoked".* agent=renewer revoked=1 `), time.Minute)
	sess, err := session.Dial(ctx, c.Addr, session.Config{TLS: withCert(t, st, stateDir, oldPEM), Name: "agent"})
	require.NoError(t, err, "TLS accepts the CA's certificate; the controller refuses it on its first stream")
	var resp msg.HelloResponse
	err = rpc.Call(ctx, sess, msg.MethodHello, msg.HelloRequest{Version: "test", Platform: "linux/amd64", Hostname: "renewer"}, &resp)
	sess.Close()
	require.ErrorIs(t, err, protocol.ErrUnauthorized, "the old certificate is retired: %v", err)

	now2, err := agent.LoadState(stateDir)
	require.NoError(t, err)
	require.NotEqual(t, old.SerialNumber, now2.Certificate().SerialNumber, "the agent stored a new certificate")
	require.Eventually(t, func() bool {
		var agents []struct {
			Name      string `json:"name"`
			Connected bool   `json:"connected"`
		}
		c.JSON(&agents, "agents", "list")
		return len(agents) == 1 && agents[0].Connected
	}, 30*time.Second, 100*time.Millisecond, "the agent is connected with its new certificate")
}
