package storage

import "crypto/rand"

// randRead fills b from the system CSPRNG (crypto/rand never fails on Linux).
func randRead(b []byte) { rand.Read(b) }
