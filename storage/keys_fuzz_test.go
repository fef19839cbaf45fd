package storage

import (
	"bytes"
	"testing"
)

// FuzzParseKeyFile: key files either fail to parse or hold a key that
// marshals back to a parseable file of the same key.
func FuzzParseKeyFile(f *testing.F) {
	k, _ := GenerateKey()
	f.Add(k.MarshalPEM())
	f.Add(k.Public().MarshalPEM())
	f.Add([]byte("-----BEGIN FERRY REPOSITORY PRIVATE KEY-----\n-----END FERRY REPOSITORY PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if priv, err := ParsePrivateKeyPEM(b); err == nil {
			again, err := ParsePrivateKeyPEM(priv.MarshalPEM())
			if err != nil || !again.Public().Equal(priv.Public()) {
				t.Fatalf("private key does not round-trip: %v", err)
			}
		}
		if pub, err := ParsePublicKeyPEM(b); err == nil {
			again, err := ParsePublicKeyPEM(pub.MarshalPEM())
			if err != nil || !bytes.Equal(again.Bytes(), pub.Bytes()) {
				t.Fatalf("public key does not round-trip: %v", err)
			}
		}
	})
}
