package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"time"

	"github.com/ferrydr/ferry/internal/buildinfo"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/protocol/rpc"
	"github.com/ferrydr/ferry/protocol/session"
)

// ErrPinMismatch means the controller's key is not the one the token names.
var ErrPinMismatch = errors.New("the controller's public key does not match the token's pin: wrong controller, or someone in between")

// ErrAlreadyEnrolled means the state directory already holds an identity.
var ErrAlreadyEnrolled = errors.New("agent already enrolled")

// EnrollConfig is `ferry-agent enroll`.
type EnrollConfig struct {
	Controller string // HOST:PORT
	Token      string
	Name       string // default: the host name
	StateDir   string
	Logger     *slog.Logger
	// Allow is recorded in the state directory: what `run` on it lets the
	// controller run here (permissions.go).
	Allow msg.Permissions
}

// Enroll turns a token into the agent's identity: it authenticates the
// controller by the token's public-key pin, sends a fresh public key, and
// stores the certificate and CA it receives.
func Enroll(ctx context.Context, cfg EnrollConfig) (*State, error) {
	if st, err := LoadState(cfg.StateDir); err == nil {
		return st, fmt.Errorf("%w as %s (%s) with %s; remove %s to enrol again", ErrAlreadyEnrolled, st.Identity.Name, st.Identity.ID, st.Identity.Controller, cfg.StateDir)
	}
	tok, err := msg.ParseToken(cfg.Token)
	if err != nil {
		return nil, err
	}
	if time.Now().After(tok.Expires) {
		return nil, fmt.Errorf("the token expired at %s", tok.Expires.Format(time.RFC3339))
	}
	if cfg.Name == "" {
		cfg.Name = hostname()
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	pub, err := publicKeyDER(key)
	if err != nil {
		return nil, err
	}
	pin, err := base64.StdEncoding.DecodeString(tok.Pin)
	if err != nil {
		return nil, err
	}
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{protocol.ALPN},
		// The CA is not known yet: the controller is authenticated by the
		// pin the token carries, checked below on its leaf's public key.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return ErrPinMismatch
			}
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
			if !bytes.Equal(sum[:], pin) {
				return ErrPinMismatch
			}
			return nil
		},
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sess, err := session.Dial(ctx, cfg.Controller, session.Config{TLS: tlsConf, Name: "agent", Logger: log, Versions: protocol.AgentVersions()})
	if err != nil {
		if hint := protocol.OlderPeerHint(err, "controller"); hint != "" {
			return nil, fmt.Errorf("connect to %s: %w; %s", cfg.Controller, err, hint)
		}
		return nil, fmt.Errorf("connect to %s: %w", cfg.Controller, err)
	}
	defer sess.Close()
	var resp msg.EnrolResponse
	err = rpc.CallKind(ctx, sess, protocol.KindEnrol, msg.MethodEnrol, msg.EnrolRequest{
		Token: cfg.Token, Name: cfg.Name, Hostname: hostname(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH, Version: buildinfo.Version, PublicKey: pub,
	}, &resp)
	if err != nil {
		return nil, fmt.Errorf("enrolment: %w", err)
	}
	st, err := saveState(cfg.StateDir, Identity{ID: resp.AgentID, Name: resp.Name, Controller: cfg.Controller, Enrolled: time.Now()},
		key, resp.Cert, resp.CA)
	if err != nil {
		return st, err
	}
	return st, SavePermissions(cfg.StateDir, cfg.Allow)
}

func publicKeyDER(k *ecdsa.PrivateKey) ([]byte, error) { return x509.MarshalPKIXPublicKey(k.Public()) }

// DefaultStateDir is where the agent keeps its state on this platform.
func DefaultStateDir() string {
	if runtime.GOOS == "windows" {
		pd := os.Getenv("ProgramData")
		if pd == "" {
			pd = `C:\ProgramData`
		}
		return pd + `\Ferry\agent`
	}
	return "/var/lib/ferry-agent"
}
