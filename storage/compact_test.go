package storage

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/internal/testenv"
	"github.com/zeebo/blake3"
)

// What the controller builds at ingest (a block that arrived
// uncompressed) is stored as S2; Compact re-encodes the cold ones to zstd
// within its budget and leaves the young ones; it folds a patch record
// only once nothing else reads its base, and GC then deletes the base.
// Every point still reads back as the bytes the test kept, after a GC that
// reclaims the old records and after a reopen.
func TestCompactRecodesColdS2ChunksToZstd(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	oo := OpenOptions{Clock: clk.now}
	r, dir := newTestRepo(t, CreateOptions{}, oo)
	const blocks = 6
	disks := []DiskSpec{{Name: "sda", Size: blocks * tbs, BlockSize: tbs}}

	// Point 1: whole blocks of text, sent uncompressed as an agent on a
	// fast link might.
	want := make([]byte, blocks*tbs)
	var ws []BlockWrite
	for b := range blocks {
		plain := content(uint64(3*b+3), tbs) // seed%3==0: text, compresses well
		copy(want[b*tbs:], plain)
		h := Hash(blake3.Sum256(plain))
		ws = append(ws, BlockWrite{Disk: "sda", Block: int64(b), Hash: h, Chunk: &Chunk{Hash: h, Codec: CodecNone, Data: plain, PlainLen: tbs}})
	}
	p1 := commitWrites(t, r, disks, ws, 1000)
	want1 := bytes.Clone(want)
	sealOpenPack(t, r)

	// Point 2: a patch of block 2, stored as a patch record, and block 5
	// rewritten whole (uncompressed again).
	copy(want[2*tbs+100:], "patched by the second point")
	h2 := Hash(blake3.Sum256(want[2*tbs : 3*tbs]))
	plain5 := content(303, tbs) // text, like point 1's blocks
	copy(want[5*tbs:], plain5)
	h5 := Hash(blake3.Sum256(plain5))
	p2 := commitWrites(t, r, disks, []BlockWrite{{Disk: "sda", Block: 2, Hash: h2,
		Patch: []PatchRun{{Offset: 100, Data: []byte("patched by the second point")}}},
		{Disk: "sda", Block: 5, Hash: h5, Chunk: &Chunk{Hash: h5, Codec: CodecNone, Data: plain5, PlainLen: tbs}}}, 2000)
	sealOpenPack(t, r)

	hashes := make([]Hash, 0, blocks+1)
	for b := range blocks {
		hashes = append(hashes, Hash(blake3.Sum256(want1[b*tbs:(b+1)*tbs])))
	}
	hashes = append(hashes, h5)
	before := map[Hash]int{}
	for _, h := range hashes {
		env, err := r.ChunkEnvelope(ctx, h)
		require.NoError(t, err)
		require.Equal(t, CodecS2, env.Codec, "chunk %s as stored at ingest", h)
		before[h] = len(env.Data)
	}
	require.True(t, isPatchRecord(t, r, h2), "the patch is stored as it arrived")

	rep, err := r.Compact(ctx, CompactOptions{ColderThan: time.Hour})
	require.NoError(t, err)
	require.Zero(t, rep.Chunks, "packs created within the hour are not cold")

	packsBefore := repoPackFiles(t, r)
	rep, err = r.Compact(ctx, CompactOptions{MaxBytes: 2 * tbs})
	require.NoError(t, err)
	require.EqualValues(t, 1, rep.Packs, "the budget of two blocks ends the call after the first pack")
	require.EqualValues(t, blocks, rep.Chunks, "the first point's pack")
	require.True(t, rep.More)

	rep, err = r.Compact(ctx, CompactOptions{})
	require.NoError(t, err)
	require.EqualValues(t, 1, rep.Packs)
	require.EqualValues(t, 1, rep.Chunks, "the second point's whole block")
	require.Zero(t, rep.Folded, "the first point still reads the patch's base: a fold would free nothing")
	require.True(t, isPatchRecord(t, r, h2), "the patch is copied as it was")
	require.False(t, rep.More)
	for _, f := range packsBefore {
		_, err := os.Stat(f)
		require.ErrorIs(t, err, fs.ErrNotExist, "a compacted pack is removed: no dead space is left")
	}
	for _, h := range hashes {
		env, err := r.ChunkEnvelope(ctx, h)
		require.NoError(t, err)
		require.Equal(t, CodecZstd, env.Codec, "chunk %s after compaction", h)
		require.Less(t, len(env.Data), before[h], "zstd is smaller than S2 on text")
	}
	rep, err = r.Compact(ctx, CompactOptions{})
	require.NoError(t, err)
	require.Zero(t, rep.Chunks, "nothing is re-encoded twice")
	require.Zero(t, rep.Packs, "a patch whose base is read is not a reason to rewrite its pack")

	requireDiskBytes(t, r, p1, "sda", want1)
	requireDiskBytes(t, r, p2, "sda", want)
	_, err = r.GC(ctx, GCOptions{RepackBelow: 1})
	require.NoError(t, err)
	requireDiskBytes(t, r, p1, "sda", want1)
	requireDiskBytes(t, r, p2, "sda", want)

	// Without the first point only the patch reads its base: GC folds
	// the patch into a whole chunk and deletes the base. (The patch was
	// copied into the open pack, which compaction leaves until sealed.)
	require.NoError(t, r.DeletePoint(ctx, p1.ID))
	sealOpenPack(t, r)
	gr, err := r.GC(ctx, GCOptions{RepackBelow: 1})
	require.NoError(t, err)
	require.False(t, isPatchRecord(t, r, h2), "the patch is folded")
	env, err := r.ChunkEnvelope(ctx, h2)
	require.NoError(t, err)
	require.Equal(t, CodecZstd, env.Codec)
	_, err = r.ChunkEnvelope(ctx, hashes[2])
	require.ErrorIs(t, err, ErrChunkMissing, "the base went in the same GC (%+v)", gr)
	requireDiskBytes(t, r, p2, "sda", want)

	require.NoError(t, r.Close())
	r, err = Open(ctx, dir, oo)
	require.NoError(t, err)
	defer r.Close()
	requireDiskBytes(t, r, p2, "sda", want)
	vr, err := r.Verify(ctx, VerifyOptions{})
	require.NoError(t, err)
	require.Empty(t, vr.Damaged)
}

// GC re-encodes the S2 chunks before it weighs the packs, so one GC both
// compacts and reclaims the S2 records left behind.
func TestGCCompactsAndReclaimsTheOldRecords(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	const blocks = 64
	disks := []DiskSpec{{Name: "sda", Size: blocks * tbs, BlockSize: tbs}}
	want := make([]byte, blocks*tbs)
	var ws []BlockWrite
	for b := range blocks {
		plain := content(uint64(3*b+300), tbs)
		copy(want[b*tbs:], plain)
		h := Hash(blake3.Sum256(plain))
		ws = append(ws, BlockWrite{Disk: "sda", Block: int64(b), Hash: h, Chunk: &Chunk{Hash: h, Codec: CodecNone, Data: plain, PlainLen: tbs}})
	}
	p := commitWrites(t, r, disks, ws, 1000)
	sealOpenPack(t, r)
	sizeBefore := repoPackBytes(t, r)
	rep, err := r.GC(ctx, GCOptions{})
	require.NoError(t, err)
	require.EqualValues(t, blocks, rep.ChunksRecoded)
	require.Positive(t, rep.RecodeSaved)
	require.Less(t, repoPackBytes(t, r), sizeBefore, "the S2 records were not left behind as dead space")
	requireDiskBytes(t, r, p, "sda", want)
}

// An encrypted repository's chunks are sealed under keys the controller
// cannot open again, so what it builds is zstd at once and Compact has
// nothing to do.
func TestEncryptedRepositoryStoresZstdAtIngest(t *testing.T) {
	ctx := context.Background()
	key, err := GenerateKey()
	require.NoError(t, err)
	r, _ := newTestRepo(t, CreateOptions{PublicKey: key.Public()}, OpenOptions{PrivateKey: key})
	disks := []DiskSpec{{Name: "sda", Size: tbs, BlockSize: tbs}}
	plain := content(3, tbs)
	h := Hash(blake3.Sum256(plain))
	p := commitWrites(t, r, disks, []BlockWrite{{Disk: "sda", Block: 0, Hash: h, Chunk: &Chunk{Hash: h, Codec: CodecNone, Data: plain, PlainLen: tbs}}}, 1000)
	env, err := r.ChunkEnvelope(ctx, h)
	require.NoError(t, err)
	require.Equal(t, CodecZstd, env.Codec)
	rep, err := r.Compact(ctx, CompactOptions{})
	require.NoError(t, err)
	require.Zero(t, rep.Chunks)
	requireDiskBytes(t, r, p, "sda", plain)
}

// commitWrites writes ws as one point of machine m1 and commits it at the
// given instant (seconds).
func commitWrites(t *testing.T, r *Repo, disks []DiskSpec, ws []BlockWrite, instant int64) Point {
	t.Helper()
	ctx := context.Background()
	p, err := r.BeginPoint(ctx, "m1", disks)
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, ws))
	pt, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(instant, 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	return pt
}

// requireDiskBytes reads a point's disk whole and compares it with want.
func requireDiskBytes(t *testing.T, r *Repo, pt Point, disk string, want []byte) {
	t.Helper()
	d, err := r.OpenDisk(context.Background(), pt.ID, disk)
	require.NoError(t, err)
	var buf bytes.Buffer
	_, err = d.WriteTo(&buf)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, buf.Bytes()), "point %d disk %s differs from the bytes the test kept", pt.ID, disk)
}

// sealOpenPack seals the open pack, as a full one is: compaction takes
// sealed packs only.
func sealOpenPack(t *testing.T, r *Repo) {
	t.Helper()
	r.c.writeMu.Lock()
	defer r.c.writeMu.Unlock()
	if r.c.open != nil {
		require.NoError(t, r.c.seal(context.Background()))
	}
}

// repoPackFiles lists the repository's pack files.
func repoPackFiles(t *testing.T, r *Repo) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.WalkDir(r.c.dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && filepath.Ext(path) == ".pack" {
			out = append(out, path)
		}
		return err
	}))
	return out
}

// repoPackBytes sums the sizes of the repository's pack files on disk.
func repoPackBytes(t *testing.T, r *Repo) int64 {
	t.Helper()
	var n int64
	require.NoError(t, filepath.WalkDir(r.c.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && filepath.Ext(path) == ".pack" {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	}))
	return n
}

// A pack reopened for appends (the open pack after a restart) and closed
// again holds no blocks past its end: XFS keeps its speculative
// preallocation on such a close, which made the repository's allocated
// size overstate what it holds by up to a pack's size per restart.
func TestPacksHoldNoPreallocationAfterARestart(t *testing.T) {
	mnt := testenv.MountLoop(t, "xfs", 1<<30)
	ctx := context.Background()
	dir := filepath.Join(mnt, "repo")
	require.NoError(t, Create(ctx, dir, CreateOptions{PackSize: DefaultPackSize}))
	const bs = 64 << 10
	disks := []DiskSpec{{Name: "sda", Size: 512 * bs, BlockSize: bs}}
	for round := range 3 {
		r, err := Open(ctx, dir, OpenOptions{Logger: testLogger(t)})
		require.NoError(t, err)
		var ws []BlockWrite
		for b := range 256 {
			ws = append(ws, chunkWrite("sda", int64(b+256*(round%2)), content(uint64(3*(round*1000+b)+1), bs))) // seed%3==1: random, incompressible
		}
		commitWrites(t, r, disks, ws, int64(1000+round))
		require.NoError(t, r.Close())
	}
	files := 0
	require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) != ".pack" {
			return err
		}
		files++
		var st unix.Stat_t
		require.NoError(t, unix.Stat(path, &st))
		require.LessOrEqual(t, st.Blocks*512, (st.Size+4095)/4096*4096, "%s: %d bytes allocated for %d", filepath.Base(path), st.Blocks*512, st.Size)
		return nil
	}))
	require.Positive(t, files)
}

// A base that only a row of the index's recent level still reads (a newer
// point wrote the same bytes again) keeps its patch unfolded: the main
// tables alone would call the fold free.
func TestCompactLeavesAPatchWhoseBaseTheRecentLevelReads(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{Clock: clk.now, RecentLimit: 1 << 20})
	disks := []DiskSpec{{Name: "sda", Size: 2 * pbs, BlockSize: pbs}}
	block := content(9, pbs)
	p1 := commitWrites(t, r, disks, []BlockWrite{chunkWrite("sda", 0, block)}, 1000)
	patched := bytes.Clone(block)
	copy(patched[100:], "patched")
	hp := Hash(blake3.Sum256(patched))
	commitWrites(t, r, disks, []BlockWrite{{Disk: "sda", Block: 0, Hash: hp,
		Patch: []PatchRun{{Offset: 100, Data: []byte("patched")}}}}, 1001)
	require.NoError(t, r.DeletePoint(ctx, p1.ID))
	// Sweeps the first point's row and folds the level; the patch is in
	// the open pack, which compaction leaves.
	_, err := r.GC(ctx, GCOptions{})
	require.NoError(t, err)
	require.True(t, isPatchRecord(t, r, hp))

	clk.t = clk.t.Add(time.Hour)
	p3 := commitWrites(t, r, disks, []BlockWrite{chunkWrite("sda", 1, block)}, 1002)
	require.Positive(t, r.c.recent.size(), "the third point's rows are in the recent level")
	sealOpenPack(t, r)
	rep, err := r.Compact(ctx, CompactOptions{ColderThan: 30 * time.Minute})
	require.NoError(t, err)
	require.Positive(t, r.c.recent.size(), "a compaction of cold packs leaves a young level")
	require.Zero(t, rep.Folded, "the base is read by the third point")
	require.True(t, isPatchRecord(t, r, hp))
	want := append(bytes.Clone(patched), block...)
	requireDiskBytes(t, r, p3, "sda", want)
}
