package scrub

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/controller/catalog"
	"github.com/ferrydr/ferry/storage"
)

const bs = 4096

// fixture is a real repository and catalog holding two points of machine
// m: the first writes blocks 0-7, the second block 8 and reads the rest
// from the first. blocks keeps what the test wrote.
type fixture struct {
	dir    string
	repo   *storage.Repo
	cat    *catalog.Catalog
	blocks [][]byte
	points []storage.Point
}

func newFixture(t *testing.T) *fixture { return newFixtureKeyed(t, nil) }

// newFixtureKeyed makes the fixture's repository encrypted to pub (when
// set); the controller's side never has the private key.
func newFixtureKeyed(t *testing.T, pub *storage.PublicKey) *fixture {
	ctx := context.Background()
	f := &fixture{dir: filepath.Join(t.TempDir(), "repo")}
	co := storage.DefaultCreateOptions()
	co.PackSize = storage.MinPackSize
	co.PublicKey = pub
	require.NoError(t, storage.Create(ctx, f.dir, co))
	var err error
	f.repo, err = storage.Open(ctx, f.dir, storage.DefaultOpenOptions())
	require.NoError(t, err)
	t.Cleanup(func() { f.repo.Close() })
	f.cat, err = catalog.Open(ctx, filepath.Join(t.TempDir(), "catalog.db"), time.Now)
	require.NoError(t, err)
	t.Cleanup(func() { f.cat.Close() })
	for i := 0; i < 9; i++ {
		b := make([]byte, bs)
		rand.Read(b)
		f.blocks = append(f.blocks, b)
	}
	f.commit(t, 0, 8)
	f.commit(t, 8, 9)
	return f
}

func (f *fixture) commit(t *testing.T, from, to int) {
	ctx := context.Background()
	p, err := f.repo.BeginPoint(ctx, "m", []storage.DiskSpec{{Name: "d", Size: 16 * bs, BlockSize: bs}})
	require.NoError(t, err)
	var ws []storage.BlockWrite
	for i := from; i < to; i++ {
		h := storage.Hash(blake3.Sum256(f.blocks[i]))
		ws = append(ws, storage.BlockWrite{Disk: "d", Block: int64(i), Hash: h,
			Chunk: &storage.Chunk{Hash: h, Codec: storage.CodecNone, Data: f.blocks[i], PlainLen: bs}})
	}
	require.NoError(t, p.Write(ctx, ws))
	pt, err := p.Commit(ctx, storage.CommitInfo{Instant: time.Now(), Consistency: storage.CrashConsistent})
	require.NoError(t, err)
	f.points = append(f.points, pt)
}

// flip changes one byte inside the stored copy of block i (random
// content is stored as is, so the test finds it in the pack files).
func (f *fixture) flip(t *testing.T, i int) {
	packs, err := filepath.Glob(filepath.Join(f.dir, "*", "*.pack"))
	require.NoError(t, err)
	more, _ := filepath.Glob(filepath.Join(f.dir, "*", "*", "*.pack"))
	packs = append(packs, more...)
	for _, p := range packs {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		if at := bytes.Index(b, f.blocks[i]); at >= 0 {
			b[at+bs/2] ^= 0x40
			require.NoError(t, os.WriteFile(p, b, 0o600))
			return
		}
	}
	t.Fatalf("block %d not found in %d pack files", i, len(packs))
}

// TestPassFindsDamageAndHoldsItsRate: a byte flipped in the stored copy of
// block 3 is found by one pass, which names both points that read it, the
// disk and the block, hands the report to OnDamage and records every
// point's audit time and damage in the catalog; each of the 9 chunks is
// read once although the second point reads 8 of them too; and the pass
// takes at least as long as its bytes at the rate limit.
func TestPassFindsDamageAndHoldsItsRate(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.flip(t, 3)
	var handed []storage.Damage
	const rate = 64 << 10
	a := New(Config{Repo: f.repo, Store: f.cat, Rate: rate,
		OnDamage: func(_ context.Context, rep storage.VerifyReport) error { handed = rep.Damaged; return nil }})
	before := time.Now()
	rep, err := a.Pass(ctx, "", 0)
	require.NoError(t, err)
	took := time.Since(before)

	require.Equal(t, int64(9), rep.Chunks, "each chunk once")
	require.Equal(t, 2, rep.Points)
	require.GreaterOrEqual(t, took.Seconds(), float64(rep.Bytes)/rate*0.95, "%d bytes at %d B/s", rep.Bytes, rate)
	require.Less(t, took.Seconds(), float64(rep.Bytes)/rate+2, "the pacer does not oversleep")
	require.Len(t, rep.Damaged, 1)
	require.Len(t, handed, 1, "OnDamage got the report")
	var hit []int64
	for _, af := range rep.Damaged[0].Affected {
		require.Equal(t, "d", af.Disk)
		require.Equal(t, []int64{3}, af.Blocks)
		hit = append(hit, af.PointID)
	}
	require.Equal(t, []int64{f.points[0].ID, f.points[1].ID}, hit)

	got, err := f.cat.PointAudits(ctx, "m")
	require.NoError(t, err)
	require.Len(t, got, 2)
	for _, p := range f.points {
		r := got[p.ID]
		require.False(t, r.Audited.Before(before), "point %d audited by this pass", p.ID)
		require.Len(t, r.Damage, 1)
		require.Equal(t, "d", r.Damage[0].Disk)
		require.Equal(t, []int64{3}, r.Damage[0].Blocks)
		require.NotEmpty(t, r.Damage[0].Error)
	}
	pr := a.Progress()
	require.False(t, pr.Running)
	require.Equal(t, int64(9), pr.Chunks)
	require.Equal(t, int64(9), pr.ChunksTotal)
	require.NotNil(t, pr.LastEnded)
}

// TestBackgroundPassesWhenPointsAreDue: the loop audits points once they
// are Every past their commit, and again Every past their last audit; a
// zero rate disables it.
func TestBackgroundPassesWhenPointsAreDue(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	off := New(Config{Repo: f.repo, Store: f.cat, Rate: 0, Every: 10 * time.Millisecond})
	off.Run(ctx) // returns at once: disabled
	require.True(t, off.Progress().BackgroundOff, "machines show says so")
	got, err := f.cat.PointAudits(ctx, "m")
	require.NoError(t, err)
	require.Empty(t, got)

	a := New(Config{Repo: f.repo, Store: f.cat, Rate: 1 << 30, Every: 300 * time.Millisecond})
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	var first time.Time
	require.Eventually(t, func() bool {
		got, err := f.cat.PointAudits(ctx, "m")
		require.NoError(t, err)
		if len(got) == 2 {
			first = got[f.points[0].ID].Audited
			return true
		}
		return false
	}, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		got, err := f.cat.PointAudits(ctx, "m")
		require.NoError(t, err)
		return got[f.points[0].ID].Audited.After(first)
	}, 10*time.Second, 20*time.Millisecond, "audited again")
	cancel()
	<-done
}

// TestPassChecksCiphertextWithoutTheKey: in an encrypted repository the
// controller, without the private key, still finds a byte flipped inside
// a stored chunk (its record checksum covers the ciphertext) and names the
// point, disk and block.
func TestPassChecksCiphertextWithoutTheKey(t *testing.T) {
	ctx := context.Background()
	k, err := storage.GenerateKey()
	require.NoError(t, err)
	f := newFixtureKeyed(t, k.Public())
	require.True(t, f.repo.Encrypted())
	a := New(Config{Repo: f.repo, Store: f.cat})
	rep, err := a.Pass(ctx, "", 0)
	require.NoError(t, err)
	require.Empty(t, rep.Damaged, "clean before the flip")
	require.Equal(t, int64(9), rep.Chunks)

	// The plaintext is not in the packs: flip a byte in the middle of the
	// pack, which lies inside one of the 9 chunk records.
	packs, err := filepath.Glob(filepath.Join(f.dir, "*", "*", "*.pack"))
	require.NoError(t, err)
	require.Len(t, packs, 1)
	b, err := os.ReadFile(packs[0])
	require.NoError(t, err)
	for _, blk := range f.blocks {
		require.Equal(t, -1, bytes.Index(b, blk[:64]), "stored encrypted")
	}
	b[len(b)/2] ^= 0x01
	require.NoError(t, os.WriteFile(packs[0], b, 0o600))

	rep, err = a.Pass(ctx, "", 0)
	require.NoError(t, err)
	require.Len(t, rep.Damaged, 1)
	require.NotEmpty(t, rep.Damaged[0].Affected)
	for _, af := range rep.Damaged[0].Affected {
		require.Equal(t, "d", af.Disk)
		require.Len(t, af.Blocks, 1)
	}
}
