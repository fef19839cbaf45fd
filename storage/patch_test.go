package storage

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// pbs is the patch tests' block size: the policy default, where a 4 KiB
// write is a sixteenth of a block.
const pbs = 64 << 10

// randomPatch writes a few random runs of up to 4 KiB into block (the test's
// copy of it) and returns them.
func randomPatch(rng *rand.Rand, block []byte) []PatchRun {
	var runs []PatchRun
	off := 0
	for len(runs) < 3 {
		off += rng.IntN(16 << 10)
		n := 1 + rng.IntN(4<<10)
		if off+n > len(block) {
			break
		}
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		copy(block[off:], data)
		runs = append(runs, PatchRun{Offset: off, Data: data})
		off += n
	}
	return runs
}

// TestPatchRecordsStoreWhatArrived: cycles of small writes into 64 KiB
// blocks are stored as patch records — the pack files grow by about the
// patches' bytes, measured on disk — chains stay within maxPatchDepth
// (the patch after the last one is rebuilt at ingest), and every point
// reads back as the bytes the test kept: as stored, after a compaction
// that folds nothing (every base is still read), after GC folds the
// patches whose bases only they read, after a reopen, and after the index
// is rebuilt from the packs.
func TestPatchRecordsStoreWhatArrived(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t, CreateOptions{}, OpenOptions{})
	const blocks = 8
	disks := []DiskSpec{{Name: "sda", Size: blocks * pbs, BlockSize: pbs}}
	rng := rand.New(rand.NewPCG(1, 2))
	img := make([]byte, blocks*pbs)
	for i := range img {
		img[i] = byte(rng.Uint32())
	}
	var ws []BlockWrite
	for b := range blocks {
		ws = append(ws, chunkWrite("sda", int64(b), img[b*pbs:(b+1)*pbs]))
	}
	points := []Point{commitWrites(t, r, disks, ws, 1000)}
	images := [][]byte{bytes.Clone(img)}

	for cycle := 1; cycle <= maxPatchDepth+2; cycle++ {
		ws = ws[:0]
		patchBytes := 0
		for _, b := range []int{1, 4, 6} { // the same blocks every cycle: chains grow
			block := img[b*pbs : (b+1)*pbs]
			runs := randomPatch(rng, block)
			patchBytes += len(encodePatch(runs))
			ws = append(ws, BlockWrite{Disk: "sda", Block: int64(b), Hash: blake3.Sum256(block), Patch: runs})
		}
		before := repoPackBytes(t, r)
		points = append(points, commitWrites(t, r, disks, ws, int64(1000+cycle)))
		images = append(images, bytes.Clone(img))
		grew := repoPackBytes(t, r) - before
		if cycle <= maxPatchDepth {
			for _, w := range ws {
				require.True(t, isPatchRecord(t, r, w.Hash), "cycle %d block %d is a patch record", cycle, w.Block)
			}
			// The patches, a record header each, and the point's records.
			require.Less(t, grew, int64(patchBytes+3*200+4096), "cycle %d: the packs grew by %d bytes for %d bytes of patches", cycle, grew, patchBytes)
		} else if cycle == maxPatchDepth+1 {
			for _, w := range ws {
				require.False(t, isPatchRecord(t, r, w.Hash), "cycle %d: a chain at its bound is rebuilt at ingest", cycle)
			}
		}
	}
	readAll := func(stage string) {
		t.Helper()
		for i, pt := range points {
			require.Equal(t, images[i], diskImage(t, r, pt.ID, "sda"), "%s: point %d", stage, i)
		}
	}
	readAll("as stored")

	countPatches := func() (patches, freeable int) {
		t.Helper()
		require.NoError(t, r.c.db.QueryRowContext(ctx, `SELECT count(*) FROM chunks WHERE base_id IS NOT NULL`).Scan(&patches))
		// Patches whose base nothing else reads: a fold would free it.
		require.NoError(t, r.c.db.QueryRowContext(ctx, `SELECT count(*) FROM chunks ch WHERE ch.base_id > 0
			AND NOT EXISTS (SELECT 1 FROM changes WHERE chunk_id = ch.base_id)
			AND NOT EXISTS (SELECT 1 FROM chunks o WHERE o.base_id = ch.base_id AND o.id <> ch.id)`).Scan(&freeable))
		return patches, freeable
	}
	sealOpenPack(t, r)
	stored, _ := countPatches()
	require.EqualValues(t, 3*maxPatchDepth+3, stored, "the patch records of every cycle but the rebuilt one")
	rep, err := r.Compact(ctx, CompactOptions{})
	require.NoError(t, err)
	require.Zero(t, rep.Folded, "every base is read by a kept point: folding would store whole blocks beside them")
	require.Zero(t, rep.Packs, "and no pack is rewritten for them")
	readAll("after compaction")

	// Without the first points, their versions are read only by the
	// patches over them: GC folds those patches, frees the bases, and
	// leaves the patches whose bases later points still read.
	for _, pt := range points[:3] {
		require.NoError(t, r.DeletePoint(ctx, pt.ID))
	}
	points, images = points[3:], images[3:]
	gr, err := r.GC(ctx, GCOptions{RepackBelow: 1})
	require.NoError(t, err)
	sealOpenPack(t, r)
	left, freeable := countPatches()
	require.Less(t, left, stored, "GC folded patches (%+v)", gr)
	require.Positive(t, left, "the patches over versions kept points read stay")
	require.Zero(t, freeable, "no patch is left whose fold would free its base")
	readAll("after GC")
	require.NoError(t, r.Close())

	_, err = Rebuild(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	r, err = Open(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	defer r.Close()
	readAll("after a rebuild of the index")
	vr, err := r.Verify(ctx, VerifyOptions{ReadData: true})
	require.NoError(t, err)
	require.Empty(t, vr.Damaged)
}

// TestPatchBasesOutliveTheirPoints: a patch's base is kept by GC while the
// patch is read, though no point reads the base itself any more; once the
// patch goes too, so does the base, in one GC.
func TestPatchBasesOutliveTheirPoints(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	disks := []DiskSpec{{Name: "sda", Size: pbs, BlockSize: pbs}}
	block := content(7, pbs)
	p1 := commitWrites(t, r, disks, []BlockWrite{chunkWrite("sda", 0, block)}, 1000)
	want := bytes.Clone(block)
	copy(want[100:], "patched")
	p2 := commitWrites(t, r, disks, []BlockWrite{{Disk: "sda", Block: 0, Hash: blake3.Sum256(want),
		Patch: []PatchRun{{Offset: 100, Data: []byte("patched")}}}}, 1001)
	require.True(t, isPatchRecord(t, r, blake3.Sum256(want)))

	require.NoError(t, r.DeletePoint(ctx, p1.ID))
	rep, err := r.GC(ctx, GCOptions{CompactColderThan: time.Hour})
	require.NoError(t, err)
	require.Zero(t, rep.ChunksDeleted, "the base of a live patch stays")
	require.Equal(t, want, diskImage(t, r, p2.ID, "sda"))

	// A newer point rewrites the block whole: without p2, nothing reads
	// the patch or its base.
	newer := content(8, pbs)
	p3 := commitWrites(t, r, disks, []BlockWrite{chunkWrite("sda", 0, newer)}, 1002)
	require.NoError(t, r.DeletePoint(ctx, p2.ID))
	rep, err = r.GC(ctx, GCOptions{CompactColderThan: time.Hour})
	require.NoError(t, err)
	require.EqualValues(t, 2, rep.ChunksDeleted, "the patch, then its base")
	require.Equal(t, newer, diskImage(t, r, p3.ID, "sda"))
}

// TestPatchClaimsAreNeverShared: a patch that does not give its hash is
// written, but its point cannot be committed: Commit fails with
// ErrHashMismatch and drops the pending point — the same answers whether
// the hash is stored or not. A patch record is never a dedup target: a
// hash-only write of its hash is refused and HasChunks says it is not
// stored. Another writer's patch to the same content is rebuilt, its whole
// chunk takes the record's row, and both points read it.
func TestPatchClaimsAreNeverShared(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	disks := []DiskSpec{{Name: "sda", Size: pbs, BlockSize: pbs}}
	begin := func(machine string) *Pending {
		p, err := r.BeginPoint(ctx, machine, disks)
		require.NoError(t, err)
		return p
	}
	// A patch that does not give its hash gets the same answers whether
	// its hash is stored (the victim's block) or stored nowhere: the
	// write succeeds, the commit fails and drops the pending point. A
	// different answer would tell the writer what another machine holds.
	secret := content(10, pbs)
	victim := begin("victim")
	require.NoError(t, victim.Write(ctx, []BlockWrite{chunkWrite("sda", 0, secret)}))
	_, err := victim.Commit(ctx, CommitInfo{Instant: time.Unix(998, 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	for _, claim := range []Hash{blake3.Sum256(secret), blake3.Sum256([]byte("stored nowhere"))} {
		liar := begin("liar")
		require.NoError(t, liar.Write(ctx, []BlockWrite{{Disk: "sda", Block: 0, Hash: claim, Patch: []PatchRun{{Offset: 0, Data: []byte("not the content")}}}}))
		_, err = liar.Commit(ctx, CommitInfo{Instant: time.Unix(999, 0), Consistency: CrashConsistent})
		require.ErrorIs(t, err, ErrHashMismatch)
		_, err = r.PendingPoint(ctx, "liar")
		require.ErrorIs(t, err, ErrNotFound, "the pending point is dropped")
	}
	pts0, err := r.Points(ctx, "liar")
	require.NoError(t, err)
	require.Empty(t, pts0)
	has, err := r.HasChunks(ctx, []Hash{blake3.Sum256([]byte("stored nowhere"))})
	require.NoError(t, err)
	require.Equal(t, []bool{false}, has)

	// Machines a and b hold different blocks; both patch them to x.
	base := map[string][]byte{"a": content(13, pbs), "b": content(16, pbs)}
	x := bytes.Clone(base["a"])
	copy(x[200:], "the same content in the end")
	copy(base["b"][:200], x[:200]) // b differs from x after the patch's end only
	copy(base["b"][200+len("the same content in the end"):], x[200+len("the same content in the end"):])
	hx := Hash(blake3.Sum256(x))
	pts := map[string]Point{}
	for _, m := range []string{"a", "b"} {
		p := begin(m)
		require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("sda", 0, base[m])}))
		_, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(1000, 0), Consistency: CrashConsistent})
		require.NoError(t, err)
	}
	pa := begin("a")
	require.NoError(t, pa.Write(ctx, []BlockWrite{{Disk: "sda", Block: 0, Hash: hx, Patch: []PatchRun{{Offset: 200, Data: []byte("the same content in the end")}}}}))
	pts["a"], err = pa.Commit(ctx, CommitInfo{Instant: time.Unix(1001, 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	require.True(t, isPatchRecord(t, r, hx))

	has, err = r.HasChunks(ctx, []Hash{hx})
	require.NoError(t, err)
	require.Equal(t, []bool{false}, has, "a patch record is not offered for dedup")
	pb := begin("b")
	require.ErrorIs(t, pb.Write(ctx, []BlockWrite{{Disk: "sda", Block: 0, Hash: hx}}), ErrChunkMissing, "a hash-only write of a patch record's hash")
	require.NoError(t, pb.Write(ctx, []BlockWrite{{Disk: "sda", Block: 0, Hash: hx, Patch: []PatchRun{{Offset: 200, Data: []byte("the same content in the end")}}}}))
	pts["b"], err = pb.Commit(ctx, CommitInfo{Instant: time.Unix(1001, 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	require.False(t, isPatchRecord(t, r, hx), "the whole chunk takes the record's row")
	for m, pt := range pts {
		require.Equal(t, x, diskImage(t, r, pt.ID, "sda"), "machine %s", m)
	}
}

// TestHonestPatchOfAStoredBlockDeduplicates: a patch whose result is a
// stored chunk is rebuilt, checked, and deduplicated: no record is added.
func TestHonestPatchOfAStoredBlockDeduplicates(t *testing.T) {
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	disks := []DiskSpec{{Name: "sda", Size: 2 * pbs, BlockSize: pbs}}
	a, b := content(21, pbs), content(22, pbs)
	commitWrites(t, r, disks, []BlockWrite{chunkWrite("sda", 0, a), chunkWrite("sda", 1, b)}, 1000)
	// Block 1 becomes block 0's content by a patch of all of it.
	before := repoPackBytes(t, r)
	pt := commitWrites(t, r, disks, []BlockWrite{{Disk: "sda", Block: 1, Hash: blake3.Sum256(a), Patch: []PatchRun{{Offset: 0, Data: a}}}}, 1001)
	require.False(t, isPatchRecord(t, r, blake3.Sum256(a)))
	require.Less(t, repoPackBytes(t, r)-before, int64(4096), "only the point's records were added")
	require.Equal(t, append(bytes.Clone(a), a...), diskImage(t, r, pt.ID, "sda"))
}

// TestPatchChecksSurviveARestart: the background checks of a pending
// point's patch records are lost with the process; Commit after a reopen
// checks every record the point holds, and a bad one drops the point.
func TestPatchChecksSurviveARestart(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t, CreateOptions{}, OpenOptions{})
	disks := []DiskSpec{{Name: "sda", Size: 2 * pbs, BlockSize: pbs}}
	a, b := content(25, pbs), content(28, pbs)
	commitWrites(t, r, disks, []BlockWrite{chunkWrite("sda", 0, a), chunkWrite("sda", 1, b)}, 1000)
	good := bytes.Clone(a)
	copy(good[10:], "good")
	p, err := r.BeginPoint(ctx, "m1", disks)
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, []BlockWrite{
		{Disk: "sda", Block: 0, Hash: blake3.Sum256(good), Patch: []PatchRun{{Offset: 10, Data: []byte("good")}}},
		{Disk: "sda", Block: 1, Hash: blake3.Sum256([]byte("a claim")), Patch: []PatchRun{{Offset: 10, Data: []byte("bad")}}},
	}))
	require.NoError(t, r.Close())

	r, err = Open(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	defer r.Close()
	p, err = r.PendingPoint(ctx, "m1")
	require.NoError(t, err)
	_, err = p.Commit(ctx, CommitInfo{Instant: time.Unix(1001, 0), Consistency: CrashConsistent})
	require.ErrorIs(t, err, ErrHashMismatch)
	_, err = r.PendingPoint(ctx, "m1")
	require.ErrorIs(t, err, ErrNotFound, "the pending point is dropped")
	pts, err := r.Points(ctx, "m1")
	require.NoError(t, err)
	require.Len(t, pts, 1)
	require.Equal(t, append(bytes.Clone(a), b...), diskImage(t, r, pts[0].ID, "sda"), "the head is untouched")

	// The agent resyncs and sends the good patch again: it commits.
	p, err = r.BeginPoint(ctx, "m1", disks)
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, []BlockWrite{{Disk: "sda", Block: 0, Hash: blake3.Sum256(good), Patch: []PatchRun{{Offset: 10, Data: []byte("good")}}}}))
	pt, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(1002, 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	require.Equal(t, append(good, b...), diskImage(t, r, pt.ID, "sda"))
}
