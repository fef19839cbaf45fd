//go:build linux

package apply

import (
	"context"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/repokey"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

// sealedRepo is a real encrypted repository holding an image's blocks, and
// the agent's copy of its private key.
type sealedRepo struct {
	repo *storage.Repo
	key  *repokey.Key
}

func newSealedRepo(t *testing.T) *sealedRepo {
	t.Helper()
	ctx := context.Background()
	sk, err := storage.GenerateKey()
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, storage.Create(ctx, dir, storage.CreateOptions{PublicKey: sk.Public(), PackSize: storage.MinPackSize}))
	r, err := storage.Open(ctx, dir, storage.OpenOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	k, err := repokey.Parse(sk.MarshalPEM())
	require.NoError(t, err)
	return &sealedRepo{repo: r, key: k}
}

// seal stores refs of im as a point of the repository (encrypted at rest)
// and returns them as sealed wire blocks, as the controller sends them.
func (sr *sealedRepo) seal(t *testing.T, im *image, refs []blockRef) []data.Block {
	t.Helper()
	ctx := context.Background()
	specs := make([]storage.DiskSpec, len(im.disks))
	for i, d := range im.disks {
		specs[i] = storage.DiskSpec{Name: d.Name, Size: d.Size, BlockSize: d.BlockSize}
	}
	p, err := sr.repo.BeginPoint(ctx, "m", specs)
	require.NoError(t, err)
	out := im.encode(t, refs)
	for i := range out {
		b := &out[i]
		if b.Flags&data.FlagZero != 0 {
			continue
		}
		plain := im.block(refs[i].disk, refs[i].block)
		h := storage.Hash(b.Hash)
		require.NoError(t, p.Write(ctx, []storage.BlockWrite{{Disk: im.disks[refs[i].disk].Name, Block: int64(refs[i].block), Hash: h,
			Chunk: &storage.Chunk{Hash: h, Codec: storage.CodecNone, Data: plain, PlainLen: len(plain)}}}))
	}
	_, err = p.Commit(ctx, storage.CommitInfo{Consistency: storage.CrashConsistent})
	require.NoError(t, err)
	for i := range out {
		b := &out[i]
		if b.Flags&data.FlagZero != 0 {
			continue
		}
		env, err := sr.repo.ChunkEnvelope(ctx, storage.Hash(b.Hash))
		require.NoError(t, err)
		require.NotNil(t, env.Key, "the repository stores the chunk encrypted")
		b.Flags, b.Codec, b.PlainLen = data.FlagSealed, uint8(env.Codec), uint32(env.PlainLen)
		b.Data = append(env.Key.Record(), env.Data...)
	}
	return out
}

func (sr *sealedRepo) header() *msg.SealedRestore {
	id := sr.repo.ID()
	return &msg.SealedRestore{RepoID: hex.EncodeToString(id[:]), KeyFingerprint: sr.repo.PublicKey().Fingerprint()}
}

func siteWithKey(t *testing.T, k *repokey.Key) *Site {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Logger = testLogger(t)
	cfg.RepositoryKey = func() (*repokey.Key, error) {
		if k == nil {
			return nil, repokey.ErrNoKey
		}
		return k, nil
	}
	s, err := NewSite(cfg)
	require.NoError(t, err)
	return s
}

func sealedImage(seed uint64) *image {
	im := newImage(msg.TargetDisk{Name: "sda", Size: 1 << 20, BlockSize: 64 << 10})
	rng := rand.New(rand.NewPCG(seed, seed+1))
	im.fill(rng, 0, 0, 512<<10, false)
	im.fill(rng, 0, 640<<10, 256<<10, true)
	return im
}

// TestSealedRestoreWritesThePlaintext: an agent holding the repository's
// key opens sealed blocks of a real encrypted repository and writes
// exactly the image; a second move writes only the changed blocks.
func TestSealedRestoreWritesThePlaintext(t *testing.T) {
	sr := newSealedRepo(t)
	site := siteWithKey(t, sr.key)
	dir := t.TempDir()
	p1 := sealedImage(1)
	h := header(dir, "m", SetStaged, 0, 1, p1)
	h.Create, h.Sealed = true, sr.header()
	blocks := sr.seal(t, p1, p1.all())
	require.Equal(t, data.FlagSealed, blocks[0].Flags)
	_, s, err := restoreTCP(t, site, h, blocks)
	require.NoError(t, err)
	require.NoError(t, s.err)
	requireContent(t, setPath(dir, "m", SetStaged), p1)

	p2 := p1.clone()
	rng := rand.New(rand.NewPCG(9, 9))
	p2.fill(rng, 0, 128<<10, 64<<10, false)
	changed := p2.diff(p1)
	require.Len(t, changed, 1)
	before := site.BytesWritten()
	h = header(dir, "m", SetStaged, 1, 2, p2)
	h.Sealed = sr.header()
	_, s, err = restoreTCP(t, site, h, sr.seal(t, p2, changed))
	require.NoError(t, err)
	require.NoError(t, s.err)
	requireContent(t, setPath(dir, "m", SetStaged), p2)
	require.Equal(t, int64(64<<10), site.BytesWritten()-before, "only the changed block was written")
}

// TestSealedRestoreRefusesWithoutTheKey: an agent with no key, or with
// another repository's key, refuses the stream with a named error before
// anything exists at the target; a sealed block on a plaintext stream is
// invalid.
func TestSealedRestoreRefusesWithoutTheKey(t *testing.T) {
	sr := newSealedRepo(t)
	p1 := sealedImage(2)
	blocks := sr.seal(t, p1, p1.all())
	other := newSealedRepo(t)
	for _, tc := range []struct {
		name string
		key  *repokey.Key
		want error
	}{
		{"no key", nil, repokey.ErrNoKey},
		{"wrong key", other.key, repokey.ErrWrongKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			site := siteWithKey(t, tc.key)
			dir := t.TempDir()
			h := header(dir, "m", SetStaged, 0, 1, p1)
			h.Create, h.Sealed = true, sr.header()
			_, s, err := restoreTCP(t, site, h, blocks)
			require.ErrorIs(t, s.err, tc.want)
			require.ErrorIs(t, err, protocol.ErrFailedPrecondition, "the controller sees the refusal's code")
			_, statErr := os.Stat(filepath.Join(dir, "m"))
			require.ErrorIs(t, statErr, os.ErrNotExist, "nothing was created at the target")
			require.Zero(t, site.BytesWritten())
		})
	}
	t.Run("lying fingerprint", func(t *testing.T) {
		// A header that names the agent's own key over another
		// repository's chunks: the data keys do not open, nothing written.
		site := siteWithKey(t, other.key)
		dir := t.TempDir()
		h := header(dir, "m", SetStaged, 0, 1, p1)
		h.Create = true
		h.Sealed = &msg.SealedRestore{RepoID: sr.header().RepoID, KeyFingerprint: other.key.Fingerprint()}
		_, s, err := restoreTCP(t, site, h, blocks)
		require.Error(t, err)
		require.ErrorIs(t, s.err, repokey.ErrWrongKey)
		requireNoData(t, setPath(dir, "m", SetStaged))
	})
	t.Run("sealed block on a plaintext stream", func(t *testing.T) {
		site := siteWithKey(t, sr.key)
		dir := t.TempDir()
		h := header(dir, "m", SetStaged, 0, 1, p1)
		h.Create = true
		_, s, err := restoreTCP(t, site, h, blocks)
		require.ErrorIs(t, err, protocol.ErrInvalid)
		require.ErrorIs(t, s.err, ErrInvalid)
		requireNoData(t, setPath(dir, "m", SetStaged))
	})
}

// requireNoData checks that a failed move wrote none of its blocks' data
// (zero blocks may have been punched by other workers) and is recorded as
// interrupted.
func requireNoData(t *testing.T, setDir string) {
	t.Helper()
	b := readFile(t, DiskPath(setDir, "sda"))
	require.True(t, isZeroBlock(b), "a block that did not open was written")
	st, err := ReadState(setDir)
	require.NoError(t, err)
	require.Equal(t, int64(1), st.MovingTo)
	require.Zero(t, st.Point)
}
