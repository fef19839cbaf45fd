package testpki

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestIssuedCertificatesVerify(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("test CA", now)
	require.NoError(t, err)
	other, err := NewCA("other CA", now)
	require.NoError(t, err)

	srv, err := ca.Server()
	require.NoError(t, err)
	_, err = srv.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool, DNSName: "127.0.0.1", CurrentTime: now})
	require.NoError(t, err)
	_, err = srv.Leaf.Verify(x509.VerifyOptions{Roots: other.Pool, CurrentTime: now})
	var ua x509.UnknownAuthorityError
	require.True(t, errors.As(err, &ua), "wrong CA: %v", err)

	cli, err := ca.Client("agent-1")
	require.NoError(t, err)
	_, err = cli.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	require.NoError(t, err)

	old, err := ca.Expired("agent-2", true)
	require.NoError(t, err)
	_, err = old.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	var inv x509.CertificateInvalidError
	require.True(t, errors.As(err, &inv) && inv.Reason == x509.Expired, "expired: %v", err)
}
