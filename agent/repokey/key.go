package repokey

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"

	"github.com/ferrydr/ferry/protocol"
)

// PEM block types of the repository key files (docs/storage-format.md).
const (
	PrivateKeyPEM = "FERRY REPOSITORY PRIVATE KEY"
	PublicKeyPEM  = "FERRY REPOSITORY PUBLIC KEY"
)

// hkdfInfo is the HKDF info string of the data-key wrap.
const hkdfInfo = "ferry repository v1 data key"

// Sizes of the sealed-chunk layout (docs/protocol.md "Sealed blocks").
const (
	SealedKeyLen = 4 + 32 + 12 + 48 // LE32(slot) ‖ E ‖ N ‖ W
	NonceLen     = 12
	TagLen       = 16
	// Overhead is what a sealed block's data adds to its encoded chunk.
	Overhead = SealedKeyLen + NonceLen + TagLen
)

// Sentinels callers branch on; each wraps the protocol sentinel of its wire
// code.
var (
	// ErrNotAKey: the file is not a repository private key.
	ErrNotAKey = fmt.Errorf("repokey: not a repository private key: %w", protocol.ErrInvalid)
	// ErrPublicKey: the file is the public half; an agent needs the private key.
	ErrPublicKey = fmt.Errorf("repokey: this is the repository's public key (repository.pub); install the private key (repository.key): %w", protocol.ErrInvalid)
	// ErrNoKey: no repository key is installed on this agent.
	ErrNoKey = fmt.Errorf("repokey: no repository key is installed on this agent (ferry-agent key install): %w", protocol.ErrFailedPrecondition)
	// ErrWrongKey: the installed key is not the repository's, or a sealed
	// data key does not open with it.
	ErrWrongKey = fmt.Errorf("repokey: wrong repository key: %w", protocol.ErrFailedPrecondition)
	// ErrCorrupt: a sealed chunk fails authentication or breaks the layout.
	ErrCorrupt = fmt.Errorf("repokey: sealed chunk: %w", protocol.ErrInvalid)
)

// Key is a repository's X25519 private key.
type Key struct {
	k   *ecdh.PrivateKey
	pub []byte
	fp  string
}

// Parse reads a private key file's contents: one PEM block of type
// PrivateKeyPEM, no headers, the 32-byte X25519 scalar. A public key file
// is ErrPublicKey; anything else ErrNotAKey.
func Parse(data []byte) (*Key, error) {
	blk, rest := pem.Decode(data)
	switch {
	case blk == nil:
		return nil, fmt.Errorf("%w: no PEM block", ErrNotAKey)
	case blk.Type == PublicKeyPEM:
		return nil, ErrPublicKey
	case blk.Type != PrivateKeyPEM:
		return nil, fmt.Errorf("%w: PEM block %q", ErrNotAKey, blk.Type)
	case len(blk.Headers) != 0:
		return nil, fmt.Errorf("%w: PEM headers", ErrNotAKey)
	case len(blk.Bytes) != 32:
		return nil, fmt.Errorf("%w: %d key bytes, want 32", ErrNotAKey, len(blk.Bytes))
	}
	if p, _ := pem.Decode(rest); p != nil {
		return nil, fmt.Errorf("%w: more than one PEM block", ErrNotAKey)
	}
	k, err := ecdh.X25519().NewPrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotAKey, err)
	}
	pub := k.PublicKey().Bytes()
	s := sha256.Sum256(pub)
	return &Key{k: k, pub: pub, fp: hex.EncodeToString(s[:])}, nil
}

// Fingerprint is the lowercase hex SHA-256 of the public key bytes: the
// repository's key id, as `ferry keys generate` prints it.
func (k *Key) Fingerprint() string { return k.fp }

// Opener opens the sealed chunks of one repository. It caches unwrapped
// data keys (one per pack slot); it is safe for concurrent use.
type Opener struct {
	key    *Key
	repoID [16]byte
	mu     sync.Mutex
	aeads  map[[SealedKeyLen]byte]cipher.AEAD
}

// NewOpener returns an opener for the repository repoID whose public key
// has the fingerprint want; another key is ErrWrongKey.
func (k *Key) NewOpener(repoID [16]byte, want string) (*Opener, error) {
	if want != k.fp {
		return nil, fmt.Errorf("%w: the repository's key is %.16s…, this agent holds %.16s…", ErrWrongKey, want, k.fp)
	}
	return &Opener{key: k, repoID: repoID, aeads: map[[SealedKeyLen]byte]cipher.AEAD{}}, nil
}

// Open decrypts a sealed chunk, sealed = LE32(slot) ‖ E ‖ N ‖ W ‖ N' ‖
// ciphertext+tag, whose plaintext has the given hash, codec and length
// (bound by the AAD). It returns the encoded chunk (still in its codec),
// appended to dst; the caller decodes it and checks the BLAKE3 hash.
func (o *Opener) Open(dst []byte, sealed []byte, hash [32]byte, codec uint8, plainLen uint32) ([]byte, error) {
	if len(sealed) < Overhead {
		return nil, fmt.Errorf("%w: %d bytes, at least %d", ErrCorrupt, len(sealed), Overhead)
	}
	aead, err := o.dataKey([SealedKeyLen]byte(sealed[:SealedKeyLen]))
	if err != nil {
		return nil, err
	}
	ct := sealed[SealedKeyLen:]
	aad := binary.LittleEndian.AppendUint32(append(append(make([]byte, 0, 37), hash[:]...), codec), plainLen)
	out, err := aead.Open(dst, ct[:NonceLen], ct[NonceLen:], aad)
	if err != nil {
		return nil, fmt.Errorf("%w: chunk %x fails authentication", ErrCorrupt, hash[:8])
	}
	return out, nil
}

// dataKey unwraps (or finds) the data key of a sealed key record.
func (o *Opener) dataKey(rec [SealedKeyLen]byte) (cipher.AEAD, error) {
	o.mu.Lock()
	a, ok := o.aeads[rec]
	o.mu.Unlock()
	if ok {
		return a, nil
	}
	slot := binary.LittleEndian.Uint32(rec[:4])
	eph, nonce, wrapped := rec[4:36], rec[36:48], rec[48:]
	ephPub, err := ecdh.X25519().NewPublicKey(eph)
	if err != nil {
		return nil, fmt.Errorf("%w: key slot %d: %w", ErrCorrupt, slot, err)
	}
	shared, err := o.key.k.ECDH(ephPub)
	if err != nil {
		return nil, fmt.Errorf("%w: key slot %d: %w", ErrCorrupt, slot, err)
	}
	kek, err := hkdf.Key(sha256.New, shared, append(append([]byte(nil), eph...), o.key.pub...), hkdfInfo, 32)
	if err != nil {
		return nil, err
	}
	wa, err := gcm(kek)
	if err != nil {
		return nil, err
	}
	aad := binary.LittleEndian.AppendUint32(append([]byte(nil), o.repoID[:]...), slot)
	dk, err := wa.Open(nil, nonce, wrapped, aad)
	if err != nil {
		return nil, fmt.Errorf("%w: the data key of slot %d does not open with key %.16s…", ErrWrongKey, slot, o.key.fp)
	}
	a, err = gcm(dk)
	if err != nil {
		return nil, err
	}
	o.mu.Lock()
	o.aeads[rec] = a
	o.mu.Unlock()
	return a, nil
}

func gcm(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// IsKeyError reports whether err is one of this package's refusals.
func IsKeyError(err error) bool {
	return errors.Is(err, ErrNoKey) || errors.Is(err, ErrWrongKey) || errors.Is(err, ErrNotAKey) || errors.Is(err, ErrPublicKey)
}
