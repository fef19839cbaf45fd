//go:build linux

package repokey_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/agent/repokey"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/storage"
)

// writeKeys writes a fresh key pair as `ferry keys generate` does.
func writeKeys(t *testing.T) (priv, pub string, k *storage.PrivateKey) {
	t.Helper()
	dir := t.TempDir()
	k, err := storage.GenerateKey()
	require.NoError(t, err)
	priv, pub = filepath.Join(dir, "repository.key"), filepath.Join(dir, "repository.pub")
	require.NoError(t, k.WritePrivateKeyFile(priv))
	require.NoError(t, k.Public().WritePublicKeyFile(pub))
	return priv, pub, k
}

// TestInstallStoresTheKeyPrivately: a valid key is stored 0600 in the
// state directory, with the fingerprint the controller prints, and loads.
func TestInstallStoresTheKeyPrivately(t *testing.T) {
	priv, _, k := writeKeys(t)
	state := t.TempDir()
	got, err := repokey.Install(state, priv)
	require.NoError(t, err)
	require.Equal(t, k.Public().Fingerprint(), got.Fingerprint())
	fi, err := os.Stat(repokey.Path(state))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	want, err := os.ReadFile(priv)
	require.NoError(t, err)
	b, err := os.ReadFile(repokey.Path(state))
	require.NoError(t, err)
	require.Equal(t, want, b)
	l, err := repokey.Load(state)
	require.NoError(t, err)
	require.Equal(t, got.Fingerprint(), l.Fingerprint())
	ents, err := os.ReadDir(state)
	require.NoError(t, err)
	require.Len(t, ents, 1, "no temporary file is left behind")

	require.NoError(t, repokey.Remove(state))
	_, err = repokey.Load(state)
	require.ErrorIs(t, err, repokey.ErrNoKey)
	require.ErrorIs(t, repokey.Remove(state), repokey.ErrNoKey)
}

// TestInstallRefusesWhatIsNotAPrivateKey: the public key, other PEM and
// junk are refused with named errors, and an installed key stays.
func TestInstallRefusesWhatIsNotAPrivateKey(t *testing.T) {
	priv, pub, k := writeKeys(t)
	state := t.TempDir()
	_, err := repokey.Install(state, priv)
	require.NoError(t, err)

	_, err = repokey.Install(state, pub)
	require.ErrorIs(t, err, repokey.ErrPublicKey)
	require.ErrorIs(t, err, protocol.ErrInvalid)

	junk := filepath.Join(t.TempDir(), "junk")
	require.NoError(t, os.WriteFile(junk, []byte("not a key\n"), 0o600))
	_, err = repokey.Install(state, junk)
	require.ErrorIs(t, err, repokey.ErrNotAKey)

	other := filepath.Join(t.TempDir(), "cert.pem")
	require.NoError(t, os.WriteFile(other, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600))
	_, err = repokey.Install(state, other)
	require.ErrorIs(t, err, repokey.ErrNotAKey)

	_, err = repokey.Install(state, filepath.Join(t.TempDir(), "absent"))
	require.ErrorIs(t, err, os.ErrNotExist)

	l, err := repokey.Load(state)
	require.NoError(t, err)
	require.Equal(t, k.Public().Fingerprint(), l.Fingerprint(), "a refused install left the installed key alone")
}

// TestParseReadsTheV1Fixture: the released key file format parses.
func TestParseReadsTheV1Fixture(t *testing.T) {
	b, err := os.ReadFile("../../storage/testdata/v1/encrypted.key")
	require.NoError(t, err)
	k, err := repokey.Parse(b)
	require.NoError(t, err)
	sk, err := storage.ParsePrivateKeyPEM(b)
	require.NoError(t, err)
	require.Equal(t, sk.Public().Fingerprint(), k.Fingerprint())
}

// TestOpenMatchesStorage: chunks sealed by a real encrypted repository
// open with the agent's implementation to their plaintext; another key is
// ErrWrongKey at the opener (fingerprint) and at the data key; a flipped
// ciphertext bit is ErrCorrupt.
func TestOpenMatchesStorage(t *testing.T) {
	ctx := context.Background()
	priv, _, sk := writeKeys(t)
	dir := t.TempDir()
	require.NoError(t, storage.Create(ctx, dir, storage.CreateOptions{PublicKey: sk.Public(), PackSize: storage.MinPackSize}))
	r, err := storage.Open(ctx, dir, storage.OpenOptions{})
	require.NoError(t, err)
	defer r.Close()
	const bs = 4096
	p, err := r.BeginPoint(ctx, "m", []storage.DiskSpec{{Name: "d", Size: 2 * bs, BlockSize: bs}})
	require.NoError(t, err)
	plain := make([]byte, bs)
	for i := range plain {
		plain[i] = byte(i * 7)
	}
	h := storage.Hash(blake3.Sum256(plain))
	require.NoError(t, p.Write(ctx, []storage.BlockWrite{{Disk: "d", Block: 0, Hash: h,
		Chunk: &storage.Chunk{Hash: h, Codec: storage.CodecNone, Data: plain, PlainLen: bs}}}))
	_, err = p.Commit(ctx, storage.CommitInfo{Consistency: storage.CrashConsistent})
	require.NoError(t, err)
	env, err := r.ChunkEnvelope(ctx, h)
	require.NoError(t, err)
	require.NotNil(t, env.Key)
	sealed := append(env.Key.Record(), env.Data...)

	b, err := os.ReadFile(priv)
	require.NoError(t, err)
	k, err := repokey.Parse(b)
	require.NoError(t, err)
	o, err := k.NewOpener(r.ID(), r.PublicKey().Fingerprint())
	require.NoError(t, err)
	enc, err := o.Open(nil, sealed, h, uint8(env.Codec), uint32(env.PlainLen))
	require.NoError(t, err)
	dec, err := data.NewDecompressor(1)
	require.NoError(t, err)
	defer dec.Close()
	got, err := dec.Plain(nil, &data.Block{Codec: uint8(env.Codec), PlainLen: uint32(env.PlainLen), Data: enc})
	require.NoError(t, err)
	require.Equal(t, plain, got)

	bad := append([]byte(nil), sealed...)
	bad[len(bad)-1] ^= 1
	_, err = o.Open(nil, bad, h, uint8(env.Codec), uint32(env.PlainLen))
	require.ErrorIs(t, err, repokey.ErrCorrupt)
	_, err = o.Open(nil, sealed, storage.Hash{1}, uint8(env.Codec), uint32(env.PlainLen))
	require.ErrorIs(t, err, repokey.ErrCorrupt, "the AAD binds the hash")

	otherPriv, _, _ := writeKeys(t)
	ob, err := os.ReadFile(otherPriv)
	require.NoError(t, err)
	other, err := repokey.Parse(ob)
	require.NoError(t, err)
	_, err = other.NewOpener(r.ID(), r.PublicKey().Fingerprint())
	require.ErrorIs(t, err, repokey.ErrWrongKey)
	require.ErrorIs(t, err, protocol.ErrFailedPrecondition)
	// An opener that believes the fingerprint (a lying header) still
	// cannot unwrap the data key.
	lying, err := other.NewOpener(r.ID(), other.Fingerprint())
	require.NoError(t, err)
	_, err = lying.Open(nil, sealed, h, uint8(env.Codec), uint32(env.PlainLen))
	require.ErrorIs(t, err, repokey.ErrWrongKey)
	require.False(t, errors.Is(err, repokey.ErrCorrupt))
}
