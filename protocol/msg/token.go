package msg

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// tokenPrefix names the token format version; a later format gets f2.
const tokenPrefix = "f1"

// ErrMalformedToken is returned when a string is not a Ferry token.
var ErrMalformedToken = errors.New("malformed enrolment token")

// Token is an enrolment token: it lets one agent (or N, see uses) obtain a
// client certificate. It carries the controller's public-key pin so the
// agent can authenticate the controller before it has the CA.
//
// Text form: f1.<id>.<secret>.<expiry-unix>.<pin>, where secret and pin are
// unpadded base64url; pin is the SHA-256 of the server's public key (the
// value curl --pinnedpubkey takes, in base64url instead of base64).
type Token struct {
	ID      string
	Secret  []byte
	Expires time.Time
	Pin     string // standard base64, as PinOf returns
}

// NewToken mints a token with a random id and secret; pin is the
// controller's public-key pin in standard base64.
func NewToken(pin string, expires time.Time) (Token, error) {
	id := make([]byte, 6)
	secret := make([]byte, 24)
	if _, err := rand.Read(id); err != nil {
		return Token{}, err
	}
	if _, err := rand.Read(secret); err != nil {
		return Token{}, err
	}
	return Token{ID: hex.EncodeToString(id), Secret: secret, Expires: expires.Truncate(time.Second), Pin: pin}, nil
}

func (t Token) String() string {
	pin, _ := base64.StdEncoding.DecodeString(t.Pin)
	return strings.Join([]string{
		tokenPrefix,
		t.ID,
		base64.RawURLEncoding.EncodeToString(t.Secret),
		strconv.FormatInt(t.Expires.Unix(), 10),
		base64.RawURLEncoding.EncodeToString(pin),
	}, ".")
}

// ParseToken parses the text form. It checks form only; validity (known id,
// secret, expiry, uses, revocation) is the controller's to check.
func ParseToken(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 5 || parts[0] != tokenPrefix {
		return Token{}, fmt.Errorf("%w: want %s.<id>.<secret>.<expiry>.<pin>", ErrMalformedToken, tokenPrefix)
	}
	if _, err := hex.DecodeString(parts[1]); err != nil || len(parts[1]) != 12 {
		return Token{}, fmt.Errorf("%w: bad id", ErrMalformedToken)
	}
	secret, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(secret) < 16 {
		return Token{}, fmt.Errorf("%w: bad secret", ErrMalformedToken)
	}
	exp, err := strconv.ParseInt(parts[3], 10, 64)
	if err != nil {
		return Token{}, fmt.Errorf("%w: bad expiry", ErrMalformedToken)
	}
	pin, err := base64.RawURLEncoding.DecodeString(parts[4])
	if err != nil || len(pin) != sha256.Size {
		return Token{}, fmt.Errorf("%w: bad controller pin", ErrMalformedToken)
	}
	return Token{ID: parts[1], Secret: secret, Expires: time.Unix(exp, 0), Pin: base64.StdEncoding.EncodeToString(pin)}, nil
}

// SecretHash is what the controller stores instead of the secret.
func SecretHash(secret []byte) []byte {
	sum := sha256.Sum256(secret)
	return sum[:]
}

// SecretMatches compares a presented secret with a stored hash in constant time.
func SecretMatches(secret, storedHash []byte) bool {
	return subtle.ConstantTimeCompare(SecretHash(secret), storedHash) == 1
}

// ControllerServerName is a DNS name every controller certificate carries.
// Agents verify the controller under this name against the CA they got at
// enrolment, so any address that reaches the controller works.
const ControllerServerName = "ferry-controller"
