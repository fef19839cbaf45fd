package msg

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestTokenRoundTrip(t *testing.T) {
	sum := sha256.Sum256([]byte(rand.Text()))
	pin := base64.StdEncoding.EncodeToString(sum[:])
	tok, err := NewToken(pin, time.Now().Add(time.Hour))
	require.NoError(t, err)
	got, err := ParseToken(tok.String())
	require.NoError(t, err)
	require.Equal(t, tok.ID, got.ID)
	require.Equal(t, tok.Secret, got.Secret)
	require.Equal(t, tok.Pin, got.Pin)
	require.Equal(t, tok.Expires.Unix(), got.Expires.Unix())
	require.True(t, SecretMatches(got.Secret, SecretHash(tok.Secret)))
	require.False(t, SecretMatches([]byte("nope-nope-nope-nope"), SecretHash(tok.Secret)))

	for _, bad := range []string{"", "f1", "f2." + tok.String()[3:], tok.String() + ".x", "f1.zz.a.1.b"} {
		_, err := ParseToken(bad)
		require.ErrorIs(t, err, ErrMalformedToken, bad)
	}
}
