package pki

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAuthorityPersistsKeyAndPin(t *testing.T) {
	dir := t.TempDir()
	a, err := Load(Config{Dir: dir})
	require.NoError(t, err)
	pin := a.Pin()
	b, err := Load(Config{Dir: dir, Hosts: []string{"dr.example.net", "10.1.2.3"}})
	require.NoError(t, err)
	require.Equal(t, pin, b.Pin(), "the pin must survive a reissue for new hosts")
	cert, _ := b.ServerCertificate()
	require.NoError(t, cert.VerifyHostname("dr.example.net"))
	require.NoError(t, cert.VerifyHostname("10.1.2.3"))
	require.NoError(t, cert.VerifyHostname(ServerName))
	require.Equal(t, a.CACert().Raw, b.CACert().Raw)
}

func TestClientCertificates(t *testing.T) {
	a, err := Load(Config{Dir: t.TempDir()})
	require.NoError(t, err)
	k, err := GenerateKey()
	require.NoError(t, err)
	c, err := a.IssueClient("ag-1", k.Public())
	require.NoError(t, err)
	require.NoError(t, a.VerifyClient(c))
	require.Equal(t, "ag-1", c.Subject.CommonName)

	other, err := Load(Config{Dir: t.TempDir()})
	require.NoError(t, err)
	foreign, err := other.IssueClient("ag-1", k.Public())
	require.NoError(t, err)
	require.ErrorIs(t, a.VerifyClient(foreign), ErrNotIssued)

	dir := t.TempDir()
	past, err := Load(Config{Dir: dir, Now: func() time.Time { return time.Now().Add(-2 * ClientValidity) }})
	require.NoError(t, err)
	expired, err := past.IssueClient("ag-2", k.Public())
	require.NoError(t, err)
	present, err := Load(Config{Dir: dir})
	require.NoError(t, err)
	require.ErrorIs(t, present.VerifyClient(expired), ErrNotIssued)
}

func TestServerCertWorksForTLS(t *testing.T) {
	a, err := Load(Config{Dir: t.TempDir()})
	require.NoError(t, err)
	cert, key := a.ServerCertificate()
	pair := tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
	pool := x509.NewCertPool()
	pool.AddCert(a.CACert())
	_, err = pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: ServerName})
	require.NoError(t, err)
}
