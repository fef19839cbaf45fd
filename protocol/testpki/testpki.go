package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/ferrydr/ferry/protocol"
)

// CA is a certificate authority for one test.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	Pool *x509.CertPool // holds Cert alone
	now  time.Time
}

// NewCA makes a CA valid from a day before now to a year after.
func NewCA(name string, now time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testpki: CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-24 * time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("testpki: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("testpki: CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{Cert: cert, Key: key, Pool: pool, now: now}, nil
}

// Leaf describes a certificate to issue.
type Leaf struct {
	CommonName string
	Hosts      []string // IP addresses and DNS names (server certificates)
	Client     bool     // client authentication instead of server
	NotBefore  time.Time
	NotAfter   time.Time
}

// Issue signs a certificate for l with a fresh key.
func (ca *CA) Issue(l Leaf) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("testpki: key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: l.CommonName},
		NotBefore:    l.NotBefore,
		NotAfter:     l.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if l.Client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, h := range l.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("testpki: certificate %s: %w", l.CommonName, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("testpki: certificate %s: %w", l.CommonName, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// Server issues a server certificate for hosts (default 127.0.0.1 and
// localhost), valid for a day around the CA's instant.
func (ca *CA) Server(hosts ...string) (tls.Certificate, error) {
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "::1", "localhost"}
	}
	return ca.Issue(Leaf{CommonName: "controller", Hosts: hosts, NotBefore: ca.now.Add(-time.Hour), NotAfter: ca.now.Add(24 * time.Hour)})
}

// Client issues a client certificate, valid for a day around the CA's instant.
func (ca *CA) Client(name string) (tls.Certificate, error) {
	return ca.Issue(Leaf{CommonName: name, Client: true, NotBefore: ca.now.Add(-time.Hour), NotAfter: ca.now.Add(24 * time.Hour)})
}

// Expired issues a certificate (client or server) that expired an hour
// before the CA's instant.
func (ca *CA) Expired(name string, client bool) (tls.Certificate, error) {
	return ca.Issue(Leaf{CommonName: name, Client: client, Hosts: []string{"127.0.0.1", "::1", "localhost"},
		NotBefore: ca.now.Add(-48 * time.Hour), NotAfter: ca.now.Add(-time.Hour)})
}

// ServerConfig is the controller's listener configuration: TLS 1.3, ALPN
// ferry/1 and http/1.1, client certificates from this CA verified if given.
func (ca *CA) ServerConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.Pool,
		NextProtos:   []string{protocol.ALPN, protocol.ALPNHTTP},
	}
}

// ClientConfig trusts this CA and presents cert when it is not nil.
func (ca *CA) ClientConfig(cert *tls.Certificate) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: ca.Pool}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}
