package storage

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// rowCounts is how many rows the main tables and the recent level hold.
func rowCounts(t *testing.T, r *Repo) (changes, recentChanges, chunks, recentChunks int) {
	t.Helper()
	require.NoError(t, r.c.db.QueryRow(`SELECT (SELECT count(*) FROM changes), (SELECT count(*) FROM recent_changes),
		(SELECT count(*) FROM chunks), (SELECT count(*) FROM recent_chunks)`).Scan(&changes, &recentChanges, &chunks, &recentChunks))
	return
}

// recentDisk is a small disk and the bytes the test keeps of it.
type recentDisk struct {
	spec []DiskSpec
	img  []byte
}

func newRecentDisk(blocks int) *recentDisk {
	return &recentDisk{spec: []DiskSpec{{Name: "sda", Size: int64(blocks * tbs), BlockSize: tbs}}, img: make([]byte, blocks*tbs)}
}

// write sets block b to content of seed in the test's copy and returns the write.
func (d *recentDisk) write(b int, seed uint64) BlockWrite {
	data := content(seed, tbs)
	copy(d.img[b*tbs:], data)
	return chunkWrite("sda", int64(b), data)
}

// TestRecentLevelKeepsWritesOutOfTheKeyedTrees: a cycle's rows go to the
// append-only recent tables, not into changes and chunks (whose B-trees a
// random row costs a page each), are read from there, and reach the main
// tables in one fold when a reader of the main tables only comes.
func TestRecentLevelKeepsWritesOutOfTheKeyedTrees(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{RecentLimit: 1 << 20})
	d := newRecentDisk(64)
	var ws []BlockWrite
	for b := 0; b < 64; b += 3 {
		ws = append(ws, d.write(b, uint64(b)+1))
	}
	p1 := commitWrites(t, r, d.spec, ws, 1)
	changes, recentChanges, chunks, recentChunks := rowCounts(t, r)
	require.Zero(t, changes, "a write must not insert into the changes tree")
	require.Zero(t, chunks, "a write must not insert into the chunks tree")
	require.Equal(t, len(ws), recentChanges)
	require.Positive(t, recentChunks)

	// Read through the level: a block's row (rowAt), a chunk by hash.
	blk, err := r.blockAt(ctx, r.c.recent.anyDisk(t), 3, p1.ID, tbs)
	require.NoError(t, err)
	require.Equal(t, d.img[3*tbs:4*tbs], blk)
	got, err := r.ReadChunk(ctx, ws[1].Hash)
	require.NoError(t, err)
	require.Equal(t, d.img[3*tbs:4*tbs], got)

	// OpenDisk reads the main table: it folds first.
	requireDiskBytes(t, r, p1, "sda", d.img)
	changes, recentChanges, chunks, recentChunks = rowCounts(t, r)
	require.Equal(t, len(ws), changes)
	require.Zero(t, recentChanges)
	require.Equal(t, recentChunks, 0)
	require.Positive(t, chunks)
	require.Zero(t, r.c.recent.size(), "the mirror empties with the tables")
}

// anyDisk returns the disk id of the level's rows (the tests here have one).
func (l *recentLevel) anyDisk(t *testing.T) int64 {
	t.Helper()
	l.mu.RLock()
	defer l.mu.RUnlock()
	for k := range l.blocks {
		return k.disk
	}
	t.Fatal("the recent level holds no row")
	return 0
}

// TestRecentLevelSurvivesReopen: the level is as durable as the main
// tables (the same transactions write it) and its mirror is rebuilt at
// Open; a pending point half folded and half recent commits whole, and
// its change records (what Rebuild restores from) hold every block.
func TestRecentLevelSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	require.NoError(t, Create(ctx, dir, CreateOptions{PackSize: MinPackSize}))
	open := func() *Repo {
		r, err := Open(ctx, dir, OpenOptions{Logger: testLogger(t), RecentLimit: 1 << 20})
		require.NoError(t, err)
		return r
	}
	r := open()
	d := newRecentDisk(32)
	p1 := commitWrites(t, r, d.spec, []BlockWrite{d.write(0, 1), d.write(5, 2), d.write(9, 3)}, 1)
	v1 := bytes.Clone(d.img)

	// Point 2: one write, a fold (as a cold reader would make), another
	// write that replaces a block of the first, and one more block.
	p, err := r.BeginPoint(ctx, "m1", d.spec)
	require.NoError(t, err)
	require.NoError(t, p.Write(ctx, []BlockWrite{d.write(5, 20), d.write(7, 21)}))
	require.NoError(t, r.c.settle(ctx))
	require.NoError(t, p.Write(ctx, []BlockWrite{d.write(7, 22), d.write(30, 23)}))
	require.Positive(t, r.c.recent.size())
	require.NoError(t, r.Close()) // no fold at Close: the level stays in its tables

	r = open()
	require.Positive(t, r.c.recent.size(), "the mirror is rebuilt from the level's tables")
	p, err = r.PendingPoint(ctx, "m1")
	require.NoError(t, err)
	p2, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(2, 0), Consistency: CrashConsistent})
	require.NoError(t, err)
	require.EqualValues(t, 3, p2.Changed, "blocks 5, 7 and 30: block 7's second write replaced its first")
	requireDiskBytes(t, r, p1, "sda", v1)
	requireDiskBytes(t, r, p2, "sda", d.img)
	require.NoError(t, r.Close())

	// The commit's change records hold every block of the point: an index
	// rebuilt from the packs alone reads the same bytes.
	_, err = Rebuild(ctx, dir, OpenOptions{Logger: testLogger(t)})
	require.NoError(t, err)
	r = open()
	defer r.Close()
	requireDiskBytes(t, r, p1, "sda", v1)
	requireDiskBytes(t, r, p2, "sda", d.img)
}

// movedChunk commits point 1 with a chunk at block 0, folds it into the
// main tables, then point 2 moves that content to block 2 (deduplicated:
// a recent row names point 1's chunk) and overwrites block 0.
func movedChunk(t *testing.T) (r *Repo, d *recentDisk, shared BlockWrite, p1, p2 Point) {
	r, _ = newTestRepo(t, CreateOptions{}, OpenOptions{RecentLimit: 1 << 20})
	d = newRecentDisk(8)
	shared = d.write(0, 7)
	p1 = commitWrites(t, r, d.spec, []BlockWrite{shared, d.write(1, 8)}, 1)
	require.NoError(t, r.c.settle(context.Background()))
	moved := shared
	moved.Block = 2
	copy(d.img[2*tbs:], d.img[0:tbs])
	p2 = commitWrites(t, r, d.spec, []BlockWrite{moved, d.write(0, 9)}, 2)
	return r, d, shared, p1, p2
}

// TestRecentLevelChunkOnlyARecentRowNamesSurvivesGC: a chunk whose only
// reader is a row of the recent level must not look unreferenced to GC,
// nor unpossessed to its machine.
func TestRecentLevelChunkOnlyARecentRowNamesSurvivesGC(t *testing.T) {
	ctx := context.Background()
	r, d, shared, p1, p2 := movedChunk(t)
	has, err := r.HasChunksOf(ctx, []string{"m1"}, []Hash{shared.Hash})
	require.NoError(t, err)
	require.Equal(t, []bool{true}, has, "m1's recent row names the chunk: m1 possesses it")
	has, err = r.HasChunksOf(ctx, []string{"m2"}, []Hash{shared.Hash})
	require.NoError(t, err)
	require.Equal(t, []bool{false}, has, "another machine does not")

	require.NoError(t, r.DeletePoint(ctx, p1.ID))
	_, err = r.GC(ctx, GCOptions{})
	require.NoError(t, err)
	requireDiskBytes(t, r, p2, "sda", d.img)
}

// TestGCFoldsTheRecentLevelFirst: GC's reference check reads the main
// table; a chunk there that only a recent row names must survive it.
// (The deletion paths fold on their own, so the state is made directly:
// the main table's only row naming the chunk is removed by hand.)
func TestGCFoldsTheRecentLevelFirst(t *testing.T) {
	ctx := context.Background()
	r, d, shared, _, p2 := movedChunk(t)
	_, err := r.c.db.Exec(`DELETE FROM changes WHERE block=0`)
	require.NoError(t, err)
	var named int
	require.NoError(t, r.c.db.QueryRow(`SELECT count(*) FROM changes c JOIN chunks k ON k.id=c.chunk_id WHERE k.hash=?`, shared.Hash[:]).Scan(&named))
	require.Zero(t, named, "precondition: no row of the main table names the chunk")

	_, err = r.GC(ctx, GCOptions{})
	require.NoError(t, err)
	requireDiskBytes(t, r, p2, "sda", d.img)
}

// TestCompactionOfAPackHoldingRecentChunks: a pack opened long ago and
// sealed within minutes is cold to compaction while the recent level
// still holds some of its chunks; the repack must move those too.
func TestCompactionOfAPackHoldingRecentChunks(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{Clock: func() time.Time { return now }, RecentLimit: 1 << 20})
	d := newRecentDisk(8)
	commitWrites(t, r, d.spec, []BlockWrite{d.write(0, 3)}, 1) // text: stored as S2, the pack opens now
	require.NoError(t, r.c.settle(ctx))
	now = now.Add(time.Hour)
	p2 := commitWrites(t, r, d.spec, []BlockWrite{d.write(1, 6), d.write(2, 9)}, 2)
	packID := r.c.open.id
	sealOpenPack(t, r)
	require.True(t, r.c.recent.inPack(packID), "precondition: the recent level holds chunks of the sealed pack")

	now = now.Add(time.Minute)
	rep, err := r.Compact(ctx, CompactOptions{ColderThan: 10 * time.Minute})
	require.NoError(t, err)
	require.EqualValues(t, 1, rep.Packs)
	require.EqualValues(t, 3, rep.Chunks, "the pack's three chunks, the recent level's two included")
	for _, f := range repoPackFiles(t, r) {
		require.NotContains(t, f, packName(packID), "the old pack is gone")
	}
	requireDiskBytes(t, r, p2, "sda", d.img)
}
