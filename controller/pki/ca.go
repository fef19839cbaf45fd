package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrydr/ferry/protocol/msg"
)

// ServerName is a DNS name every server certificate carries. Agents verify
// the controller against the CA under this name, so they keep working when
// the controller is reached through an address the certificate does not list.
const ServerName = msg.ControllerServerName

// Validity periods. Client certificates are short-lived and renewed by the
// agent once a third of the lifetime is left.
const (
	caValidity     = 20 * 365 * 24 * time.Hour
	serverValidity = 2 * 365 * 24 * time.Hour
	ClientValidity = 30 * 24 * time.Hour
)

// ErrNotIssued is returned for a certificate this CA did not issue.
var ErrNotIssued = errors.New("pki: certificate not issued by this controller")

// Authority holds the CA key pair and the server certificate.
type Authority struct {
	dir        string
	caCert     *x509.Certificate
	caKey      crypto.Signer
	serverCert *x509.Certificate
	serverKey  crypto.Signer
	now        func() time.Time
}

// Config says where the authority keeps its files and which names the server
// certificate must carry besides ServerName, localhost and loopback.
type Config struct {
	Dir   string           // e.g. DATA/pki; created 0700
	Hosts []string         // extra DNS names or IP addresses
	Now   func() time.Time // nil = time.Now
}

// Load opens the authority in cfg.Dir, creating the CA and the server
// certificate on first use. The server key is kept across restarts so the
// public-key pin in tokens stays valid; the certificate is reissued when it
// nears expiry or lacks a requested host.
func Load(cfg Config) (*Authority, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	a := &Authority{dir: cfg.Dir, now: cfg.Now}
	var err error
	a.caKey, err = loadOrCreateKey(filepath.Join(cfg.Dir, "ca.key"))
	if err != nil {
		return nil, err
	}
	a.caCert, err = loadCert(filepath.Join(cfg.Dir, "ca.crt"))
	if errors.Is(err, os.ErrNotExist) {
		a.caCert, err = a.createCA()
	}
	if err != nil {
		return nil, err
	}
	a.serverKey, err = loadOrCreateKey(filepath.Join(cfg.Dir, "server.key"))
	if err != nil {
		return nil, err
	}
	a.serverCert, err = loadCert(filepath.Join(cfg.Dir, "server.crt"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if a.serverCert == nil || a.needsReissue(a.serverCert, cfg.Hosts) {
		if a.serverCert, err = a.issueServer(cfg.Hosts); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func (a *Authority) createCA() (*x509.Certificate, error) {
	now := a.now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "Ferry controller CA", Organization: []string{"Ferry"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, a.caKey.Public(), a.caKey)
	if err != nil {
		return nil, fmt.Errorf("pki: create CA: %w", err)
	}
	return writeCert(filepath.Join(a.dir, "ca.crt"), der)
}

func (a *Authority) needsReissue(c *x509.Certificate, hosts []string) bool {
	if a.now().Add(serverValidity / 4).After(c.NotAfter) {
		return true
	}
	if c.CheckSignatureFrom(a.caCert) != nil {
		return true
	}
	for _, h := range hosts {
		if c.VerifyHostname(h) != nil {
			return true
		}
	}
	return false
}

func (a *Authority) issueServer(hosts []string) (*x509.Certificate, error) {
	now := a.now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: ServerName, Organization: []string{"Ferry"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(serverValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{ServerName, "localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if hn, err := os.Hostname(); err == nil && hn != "" {
		tmpl.DNSNames = append(tmpl.DNSNames, hn)
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.caCert, a.serverKey.Public(), a.caKey)
	if err != nil {
		return nil, fmt.Errorf("pki: issue server certificate: %w", err)
	}
	return writeCert(filepath.Join(a.dir, "server.crt"), der)
}

// IssueClient signs a client certificate for an agent's public key. The
// agent id is the certificate's common name.
func (a *Authority) IssueClient(agentID string, pub crypto.PublicKey) (*x509.Certificate, error) {
	now := a.now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: agentID, Organization: []string{"Ferry agent"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(ClientValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.caCert, pub, a.caKey)
	if err != nil {
		return nil, fmt.Errorf("pki: issue client certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// VerifyClient checks that cert chains to this CA and is valid now. It does
// not look at revocation; the caller owns that list.
func (a *Authority) VerifyClient(cert *x509.Certificate) error {
	pool := x509.NewCertPool()
	pool.AddCert(a.caCert)
	_, err := cert.Verify(x509.VerifyOptions{
		Roots:       pool,
		CurrentTime: a.now(),
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotIssued, err)
	}
	return nil
}

// CACert returns the CA certificate.
func (a *Authority) CACert() *x509.Certificate { return a.caCert }

// CAPEM returns the CA certificate in PEM form, as agents store it.
func (a *Authority) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.caCert.Raw})
}

// ServerCertificate returns the server certificate and key for a tls.Config.
func (a *Authority) ServerCertificate() (*x509.Certificate, crypto.Signer) {
	return a.serverCert, a.serverKey
}

// Pin is the base64 (standard) SHA-256 of the server certificate's
// SubjectPublicKeyInfo: what `curl --pinnedpubkey sha256//PIN` checks.
func (a *Authority) Pin() string { return PinOf(a.serverCert) }

// PinOf computes the public-key pin of a certificate.
func PinOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n.Add(n, big.NewInt(1))
}

// GenerateKey makes a P-256 key, the kind every Ferry certificate uses.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}
