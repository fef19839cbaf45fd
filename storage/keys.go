package storage

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/ferrydr/ferry/storage/internal/pack"
)

// PEM block types of the key files.
const (
	privateKeyPEM = "FERRY REPOSITORY PRIVATE KEY"
	publicKeyPEM  = "FERRY REPOSITORY PUBLIC KEY"
)

// hkdfInfo is the HKDF info string of the data-key wrap (docs/storage-format.md).
const hkdfInfo = "ferry repository v1 data key"

// PrivateKey is a repository's X25519 private key. Reading plaintext of an
// encrypted repository needs it; writing and verifying ciphertext does not.
type PrivateKey struct{ k *ecdh.PrivateKey }

// PublicKey is a repository's X25519 public key; data keys are sealed to it.
type PublicKey struct{ k *ecdh.PublicKey }

// GenerateKey makes a new repository key pair.
func GenerateKey() (*PrivateKey, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("storage: generate key: %w", err)
	}
	return &PrivateKey{k: k}, nil
}

// Public returns the key's public half.
func (k *PrivateKey) Public() *PublicKey { return &PublicKey{k: k.k.PublicKey()} }

// Bytes returns the 32-byte X25519 public key.
func (p *PublicKey) Bytes() []byte { return p.k.Bytes() }

// Equal reports whether two public keys are the same.
func (p *PublicKey) Equal(o *PublicKey) bool { return o != nil && p.k.Equal(o.k) }

// Fingerprint is the lowercase hex SHA-256 of the 32 public key bytes; the
// first 16 digits are enough to tell keys apart in messages.
func (p *PublicKey) Fingerprint() string {
	s := sha256.Sum256(p.k.Bytes())
	return hex.EncodeToString(s[:])
}

// ParsePublicKey parses the raw 32-byte X25519 public key.
func parsePublicKeyBytes(b []byte) (*PublicKey, error) {
	k, err := ecdh.X25519().NewPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("storage: public key: %w", err)
	}
	return &PublicKey{k: k}, nil
}

// ParsePrivateKeyPEM parses a private key file's contents.
func ParsePrivateKeyPEM(data []byte) (*PrivateKey, error) {
	b, err := decodeKeyPEM(data, privateKeyPEM)
	if err != nil {
		return nil, err
	}
	k, err := ecdh.X25519().NewPrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("storage: private key: %w", err)
	}
	return &PrivateKey{k: k}, nil
}

// ParsePublicKeyPEM parses a public key file's contents.
func ParsePublicKeyPEM(data []byte) (*PublicKey, error) {
	b, err := decodeKeyPEM(data, publicKeyPEM)
	if err != nil {
		return nil, err
	}
	return parsePublicKeyBytes(b)
}

func decodeKeyPEM(data []byte, typ string) ([]byte, error) {
	blk, rest := pem.Decode(data)
	if blk == nil {
		return nil, fmt.Errorf("storage: no PEM block %q found", typ)
	}
	if blk.Type != typ {
		return nil, fmt.Errorf("storage: PEM block is %q, want %q", blk.Type, typ)
	}
	if len(blk.Headers) != 0 {
		return nil, fmt.Errorf("storage: PEM block %q has unexpected headers", typ)
	}
	if len(blk.Bytes) != 32 {
		return nil, fmt.Errorf("storage: %s is %d bytes, want 32", typ, len(blk.Bytes))
	}
	if p, _ := pem.Decode(rest); p != nil {
		return nil, fmt.Errorf("storage: more than one PEM block in key file")
	}
	return blk.Bytes, nil
}

// MarshalPEM returns the private key file's contents.
func (k *PrivateKey) MarshalPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: privateKeyPEM, Bytes: k.k.Bytes()})
}

// MarshalPEM returns the public key file's contents.
func (p *PublicKey) MarshalPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: publicKeyPEM, Bytes: p.k.Bytes()})
}

// WritePrivateKeyFile writes the key with mode 0600 through the small-file
// durable path (temp, fsync, rename, fsync dir).
func (k *PrivateKey) WritePrivateKeyFile(path string) error {
	return syncer{}.writeFile(path, k.MarshalPEM(), 0o600, syncKeyFile, syncKeyDir)
}

// WritePublicKeyFile writes the public key the same way (mode 0600 too: a
// key file is not meant to be world-readable even when it may be).
func (p *PublicKey) WritePublicKeyFile(path string) error {
	return syncer{}.writeFile(path, p.MarshalPEM(), 0o600, syncKeyFile, syncKeyDir)
}

// LoadPrivateKeyFile reads a private key file.
func LoadPrivateKeyFile(path string) (*PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, opErr("read key", path, err)
	}
	k, err := ParsePrivateKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// LoadPublicKeyFile reads a public key file.
func LoadPublicKeyFile(path string) (*PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, opErr("read key", path, err)
	}
	k, err := ParsePublicKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// dataKey is an unwrapped per-pack data key.
type dataKey struct {
	slot   uint32
	aead   cipher.AEAD
	sealed pack.SealedKey
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// wrapAAD binds a sealed data key to its repository and slot.
func wrapAAD(repoID [16]byte, slot uint32) []byte {
	return binary.LittleEndian.AppendUint32(append([]byte(nil), repoID[:]...), slot)
}

func wrapKey(pub *PublicKey, shared, ephPub []byte) ([]byte, error) {
	salt := append(append([]byte(nil), ephPub...), pub.k.Bytes()...)
	return hkdf.Key(sha256.New, shared, salt, hkdfInfo, 32)
}

// sealDataKey makes a fresh random data key and seals it to pub.
func sealDataKey(pub *PublicKey, repoID [16]byte, slot uint32) (*dataKey, error) {
	dk := make([]byte, 32)
	rand.Read(dk)
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	shared, err := eph.ECDH(pub.k)
	if err != nil {
		return nil, err
	}
	kek, err := wrapKey(pub, shared, eph.PublicKey().Bytes())
	if err != nil {
		return nil, err
	}
	wa, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	sk := pack.SealedKey{Slot: slot}
	copy(sk.EphemeralPub[:], eph.PublicKey().Bytes())
	rand.Read(sk.Nonce[:])
	copy(sk.Wrapped[:], wa.Seal(nil, sk.Nonce[:], dk, wrapAAD(repoID, slot)))
	a, err := newGCM(dk)
	if err != nil {
		return nil, err
	}
	return &dataKey{slot: slot, aead: a, sealed: sk}, nil
}

// openDataKey unwraps a sealed data key. A wrong private key fails the
// AES-GCM tag check and yields ErrWrongKey, never a wrong key.
func openDataKey(priv *PrivateKey, repoID [16]byte, sk pack.SealedKey) (cipher.AEAD, error) {
	eph, err := ecdh.X25519().NewPublicKey(sk.EphemeralPub[:])
	if err != nil {
		return nil, fmt.Errorf("%w: sealed key slot %d: %v", ErrCorrupt, sk.Slot, err)
	}
	shared, err := priv.k.ECDH(eph)
	if err != nil {
		return nil, fmt.Errorf("%w: sealed key slot %d: %v", ErrCorrupt, sk.Slot, err)
	}
	kek, err := wrapKey(priv.Public(), shared, sk.EphemeralPub[:])
	if err != nil {
		return nil, err
	}
	wa, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	dk, err := wa.Open(nil, sk.Nonce[:], sk.Wrapped[:], wrapAAD(repoID, sk.Slot))
	if err != nil {
		return nil, fmt.Errorf("%w: data key slot %d does not open with this key", ErrWrongKey, sk.Slot)
	}
	return newGCM(dk)
}

// chunkAAD binds a chunk's ciphertext to its hash, codec and length.
func chunkAAD(h Hash, codec Codec, plainLen uint32) []byte {
	b := make([]byte, 0, 37)
	b = append(b, h[:]...)
	b = append(b, byte(codec))
	return binary.LittleEndian.AppendUint32(b, plainLen)
}

const gcmNonceSize = 12
