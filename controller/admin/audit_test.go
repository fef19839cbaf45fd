package admin

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRedactBody: secrets at any depth become "[redacted]", other fields
// stay, target fields are collected, and a body that is not JSON is kept
// only as its size.
func TestRedactBody(t *testing.T) {
	body := []byte(`{"machine":"web1","machines":["a","web1"],"key":"LS0tLS1CRUdJTiBQUklWQVRF",
		"options":{"password":"hunter2","uri":"qemu:///system","items":[{"api_token":"t0k"}]},"point":"latest"}`)
	red, names := redactBody(body)
	require.Equal(t, []string{"web1", "a"}, names)
	var got map[string]any
	require.NoError(t, json.Unmarshal(red, &got))
	require.Equal(t, map[string]any{
		"machine": "web1", "machines": []any{"a", "web1"}, "key": redacted, "point": "latest",
		"options": map[string]any{"password": redacted, "uri": "qemu:///system", "items": []any{map[string]any{"api_token": redacted}}},
	}, got)
	for _, secret := range []string{"LS0tLS1", "hunter2", "t0k"} {
		require.NotContains(t, string(red), secret)
	}

	red, names = redactBody([]byte("token=abc"))
	require.JSONEq(t, `{"unparsed_bytes":9}`, string(red))
	require.Empty(t, names)
	red, _ = redactBody(nil)
	require.Nil(t, red)
}

// TestTokenIdentityHidesTheToken: the identity tells tokens apart and
// does not contain the token.
func TestTokenIdentityHidesTheToken(t *testing.T) {
	a, b := TokenIdentity("secret-one"), TokenIdentity("secret-two")
	require.NotEqual(t, a, b)
	require.NotContains(t, a, "secret")
	require.Regexp(t, `^token:sha256:[0-9a-f]{12}$`, a)
}
