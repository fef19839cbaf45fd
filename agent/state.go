package agent

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
)

// ErrNotEnrolled means the state directory holds no enrolment.
var ErrNotEnrolled = errors.New("agent is not enrolled (run 'ferry-agent enroll' or 'ferry-agent install')")

// File names in the state directory.
const (
	identityFile = "agent.json"
	keyFile      = "key.pem"
	certFile     = "cert.pem"
	caFile       = "ca.pem"
	machinesDir  = "machines"
)

// Identity is what enrolment leaves in the state directory.
type Identity struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Controller string    `json:"controller"` // HOST:PORT
	Enrolled   time.Time `json:"enrolled"`
}

// State is an enrolled agent's identity and credentials.
type State struct {
	Dir      string
	Identity Identity
	key      *ecdsa.PrivateKey
	cert     *x509.Certificate
	certPEM  []byte
	caPEM    []byte
	caPool   *x509.CertPool
}

// LoadState reads the state directory.
func LoadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, identityFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no %s in %s", ErrNotEnrolled, identityFile, dir)
	}
	if err != nil {
		return nil, err
	}
	s := &State{Dir: dir}
	if err := json.Unmarshal(b, &s.Identity); err != nil {
		return nil, fmt.Errorf("agent state %s: %w", identityFile, err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, fmt.Errorf("agent state: %w", err)
	}
	if s.key, err = parseKey(keyPEM); err != nil {
		return nil, err
	}
	if s.certPEM, err = os.ReadFile(filepath.Join(dir, certFile)); err != nil {
		return nil, fmt.Errorf("agent state: %w", err)
	}
	if s.cert, err = parseCert(s.certPEM); err != nil {
		return nil, err
	}
	if s.caPEM, err = os.ReadFile(filepath.Join(dir, caFile)); err != nil {
		return nil, fmt.Errorf("agent state: %w", err)
	}
	s.caPool = x509.NewCertPool()
	if !s.caPool.AppendCertsFromPEM(s.caPEM) {
		return nil, fmt.Errorf("agent state: %s holds no certificate", caFile)
	}
	return s, nil
}

// saveState writes a fresh enrolment: key first, identity last, so a state
// directory with an identity always has its credentials.
func saveState(dir string, id Identity, key *ecdsa.PrivateKey, certPEM, caPEM []byte) (*State, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, keyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, certFile), certPEM, 0o600); err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, caFile), caPEM, 0o600); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, identityFile), b, 0o600); err != nil {
		return nil, err
	}
	return LoadState(dir)
}

// replaceCert stores a renewed certificate.
func (s *State) replaceCert(certPEM []byte) error {
	c, err := parseCert(certPEM)
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(s.Dir, certFile), certPEM, 0o600); err != nil {
		return err
	}
	s.cert, s.certPEM = c, certPEM
	return nil
}

// Certificate returns the agent's current client certificate.
func (s *State) Certificate() *x509.Certificate { return s.cert }

// NeedsRenewal reports whether less than a third of the certificate's
// lifetime is left.
func (s *State) NeedsRenewal(now time.Time) bool {
	life := s.cert.NotAfter.Sub(s.cert.NotBefore)
	return now.After(s.cert.NotAfter.Add(-life / 3))
}

// TLSConfig is the client configuration of an enrolled agent: its
// certificate, the controller's CA, and the fixed controller name.
func (s *State) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{protocol.ALPN},
		ServerName: msg.ControllerServerName,
		RootCAs:    s.caPool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &tls.Certificate{Certificate: [][]byte{s.cert.Raw}, PrivateKey: s.key, Leaf: s.cert}, nil
		},
	}
}

// MachineDir is where a machine's block maps live.
func (s *State) MachineDir(machine string) string {
	return filepath.Join(s.Dir, machinesDir, machine)
}

func parseKey(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("agent state: no PEM key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("agent state: key: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("agent state: key is not ECDSA")
	}
	return ek, nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("agent state: no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}
