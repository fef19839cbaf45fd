package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
)

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }
