package storage

import (
	"context"
	"sort"
	"sync"
	"time"
)

// The index's recent level (docs/storage-format.md "Recent level").
//
// Under small random writes every block of a group commit inserted a row
// into two B-trees keyed at random, chunks by hash and changes by (disk,
// block, seq): each row dirtied a page of each tree, the WAL took every
// such page once per group commit and the checkpoint once more, and the
// controller wrote 2.5 bytes per byte churned. Write transactions
// therefore append their rows to recent_chunks and recent_changes (rowid
// tables: the pages written are the tail's), and a fold moves them into
// the keyed trees in one sorted transaction once the level holds
// recentLimit rows, where rows that share a page share its write.
//
// The level is mirrored in memory, rebuilt from its tables at Open. The
// paths that run every cycle — Write's lookups, Commit, HasChunksOf, a
// staging Diff, reads of chunks by id or hash, a block's newest row —
// consult it first and the main tables after. Every other reader of chunks or changes folds
// first (settle), so it finds everything in the main tables.
//
// Readers that do not hold writeMu consult the level before the main
// tables: a fold commits the rows into the main tables before it empties
// the level, so a row is found in one or the other (or both, with the same
// content) whenever the reader looks.
//
// Invariant: for one disk, a row in the level has a seq at least that of
// any row of the same block in the main tables. A disk's rows are written
// by its machine's pending point, whose id is above every committed point
// of the machine; the rows written into the main tables directly (a
// commit's tombstones) come after a fold and have the committing point's
// seq, and later writes of that point land in the level with the same seq.
// Where the merge is cheap it takes the higher seq anyway.

// defaultRecentLimit is how many rows (chunks and changes) the level holds
// before a fold: ~26 cycles of 20 MB/s of 4 KiB random writes every 2 s,
// about 67 MB of the controller's memory (255 bytes per row, measured). In
// the RPO bench the controller wrote 1.16 bytes per byte churned with it,
// 1.31–1.33 with half of it, 2.51 without the level (docs/benchmarks.md).
// A variable: the package's tests run with others.
var defaultRecentLimit = 1 << 18

type diskBlock struct{ disk, block int64 }
type chunkDisk struct{ chunk, disk int64 }
type diskSeq struct{ disk, seq int64 }

// recentRow is one change row of the level; chunk 0 is a zero block (chunk
// ids start at 1). at is its rowid in recent_changes (a fold round moves
// the rows up to a rowid, foldround.go).
type recentRow struct {
	seq   int64
	chunk int64
	at    int64
}

// recentChange is a change row as written, and its rowid.
type recentChange struct {
	disk, block, seq, chunk int64
	at                      int64
}

// recentLevel is the in-memory mirror of recent_chunks and recent_changes.
type recentLevel struct {
	mu     sync.RWMutex
	chunks map[int64]chunkRow
	byHash map[Hash]int64
	blocks map[diskBlock][]recentRow // ascending seq, one row per seq
	points map[diskSeq][]int64       // the blocks with a row of that seq, each once
	owners map[chunkDisk]int32       // rows of a disk naming a chunk
	packs  map[uint64]int            // pack id → chunks of the level in it
	rows   int
	lastAt int64     // the highest rowid of recent_changes the mirror holds
	since  time.Time // when the level last went from empty to not

	nextID int64 // the next chunk id; under writeMu
	limit  int
}

func newRecentLevel(limit int) *recentLevel {
	l := &recentLevel{limit: limit}
	l.reset()
	return l
}

func (l *recentLevel) reset() {
	l.chunks = map[int64]chunkRow{}
	l.byHash = map[Hash]int64{}
	l.blocks = map[diskBlock][]recentRow{}
	l.points = map[diskSeq][]int64{}
	l.owners = map[chunkDisk]int32{}
	l.packs = map[uint64]int{}
	l.rows = 0
	l.lastAt = 0
	l.since = time.Time{}
}

// size is the rows the level holds.
func (l *recentLevel) size() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.rows + len(l.chunks)
}

// putChunk adds or replaces a chunk row. Call with mu held.
func (l *recentLevel) putChunk(row chunkRow) {
	if old, ok := l.chunks[row.id]; ok {
		if old.hash != row.hash {
			delete(l.byHash, old.hash)
		}
		if l.packs[old.pack]--; l.packs[old.pack] <= 0 {
			delete(l.packs, old.pack)
		}
	}
	l.packs[row.pack]++
	l.chunks[row.id] = row
	l.byHash[row.hash] = row.id
}

// putRow adds a change row; a row for the same (disk, block, seq)
// replaces the earlier one. Call with mu held.
func (l *recentLevel) putRow(ch recentChange) {
	k := diskBlock{ch.disk, ch.block}
	rs := l.blocks[k]
	i := sort.Search(len(rs), func(i int) bool { return rs[i].seq >= ch.seq })
	if i < len(rs) && rs[i].seq == ch.seq {
		l.unown(rs[i].chunk, ch.disk)
		rs[i].chunk, rs[i].at = ch.chunk, ch.at
	} else {
		rs = append(rs, recentRow{})
		copy(rs[i+1:], rs[i:])
		rs[i] = recentRow{seq: ch.seq, chunk: ch.chunk, at: ch.at}
		l.blocks[k] = rs
		ps := diskSeq{ch.disk, ch.seq}
		l.points[ps] = append(l.points[ps], ch.block)
		l.rows++
	}
	if ch.chunk != 0 {
		l.owners[chunkDisk{ch.chunk, ch.disk}]++
	}
	l.lastAt = max(l.lastAt, ch.at)
}

func (l *recentLevel) unown(chunk, disk int64) {
	k := chunkDisk{chunk, disk}
	if chunk == 0 {
		return
	}
	if l.owners[k]--; l.owners[k] <= 0 {
		delete(l.owners, k)
	}
}

// recentDelta is what one write transaction adds to the level: applied to
// the mirror only once the transaction has committed.
type recentDelta struct {
	chunks []chunkRow
	rows   []recentChange
	nextID int64
}

func (l *recentLevel) apply(d *recentDelta, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rows+len(l.chunks) == 0 {
		l.since = now
	}
	for _, row := range d.chunks {
		l.putChunk(row)
	}
	for _, ch := range d.rows {
		l.putRow(ch)
	}
	l.nextID = max(l.nextID, d.nextID)
}

// chunk returns a chunk row of the level by id.
func (l *recentLevel) chunk(id int64) (chunkRow, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	row, ok := l.chunks[id]
	return row, ok
}

// chunkOf returns a chunk row of the level by hash.
func (l *recentLevel) chunkOf(h Hash) (chunkRow, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	id, ok := l.byHash[h]
	if !ok {
		return chunkRow{}, false
	}
	return l.chunks[id], true
}

// rowAt is block's newest row of the level at or before seq.
func (l *recentLevel) rowAt(disk, block, seq int64) (recentRow, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	rs := l.blocks[diskBlock{disk, block}]
	i := sort.Search(len(rs), func(i int) bool { return rs[i].seq > seq })
	if i == 0 {
		return recentRow{}, false
	}
	return rs[i-1], true
}

// pointRows returns the level's rows of one point on one disk with block
// > after, ascending by block.
func (l *recentLevel) pointRows(disk, seq, after int64) []recentChange {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var out []recentChange
	for _, b := range l.points[diskSeq{disk, seq}] {
		if b <= after {
			continue
		}
		rs := l.blocks[diskBlock{disk, b}]
		i := sort.Search(len(rs), func(i int) bool { return rs[i].seq >= seq })
		if i < len(rs) && rs[i].seq == seq {
			out = append(out, recentChange{disk: disk, block: b, seq: seq, chunk: rs[i].chunk})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].block < out[j].block })
	return out
}

// rowsUpTo reports whether the level holds a row of disk with seq <= seq.
func (l *recentLevel) rowsUpTo(disk, seq int64) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for k := range l.points {
		if k.disk == disk && k.seq <= seq {
			return true
		}
	}
	return false
}

// blocksBetween lists the blocks of disk with a row of the level whose
// seq is in (lo, hi].
func (l *recentLevel) blocksBetween(disk, lo, hi int64) []int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var out []int64
	for k, bs := range l.points {
		if k.disk == disk && k.seq > lo && k.seq <= hi {
			out = append(out, bs...)
		}
	}
	return out
}

// inPack reports whether a chunk of the level lies in pack.
func (l *recentLevel) inPack(pack uint64) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.packs[pack] > 0
}

// named returns the chunk ids the level names: those its change rows read
// and the bases of its patch records. Compaction leaves a patch over one
// of them unfolded: its base is still read.
func (l *recentLevel) named() map[int64]bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make(map[int64]bool, len(l.owners))
	for k := range l.owners {
		out[k.chunk] = true
	}
	for _, ch := range l.chunks {
		if ch.patch {
			out[ch.base] = true
		}
	}
	return out
}

// owned reports whether a row of the level on one of disks names chunk.
func (l *recentLevel) owned(chunk int64, disks []int64) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, d := range disks {
		if l.owners[chunkDisk{chunk, d}] > 0 {
			return true
		}
	}
	return false
}

// loadRecent fills the mirror from the level's tables (Open), and sets
// the next chunk id above every id either level holds.
func (c *core) loadRecent(ctx context.Context) error {
	l := c.recent
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reset()
	rows, err := c.db.QueryContext(ctx, `SELECT `+chunkCols+` FROM recent_chunks`)
	if err != nil {
		return err
	}
	for rows.Next() {
		row, err := scanChunk(rows)
		if err != nil {
			rows.Close()
			return err
		}
		l.putChunk(row)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	rows, err = c.db.QueryContext(ctx, `SELECT rowid, disk_id, block, seq, coalesce(chunk_id, 0) FROM recent_changes ORDER BY rowid`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var ch recentChange
		if err := rows.Scan(&ch.at, &ch.disk, &ch.block, &ch.seq, &ch.chunk); err != nil {
			rows.Close()
			return err
		}
		l.putRow(ch)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var top int64
	err = c.db.QueryRowContext(ctx, `SELECT max(coalesce((SELECT max(id) FROM chunks), 0), coalesce((SELECT max(id) FROM recent_chunks), 0))`).Scan(&top)
	l.nextID = top + 1
	return err
}

// foldLocked moves the level into the main tables in one transaction,
// sorted by their keys. Call with writeMu held.
func (c *core) foldLocked(ctx context.Context) error {
	n := c.recent.size()
	if n == 0 {
		return nil
	}
	start := time.Now()
	err := c.foldTx(ctx, nil,
		`INSERT INTO chunks(`+chunkCols+`) SELECT `+chunkCols+` FROM recent_chunks ORDER BY hash`,
		// The later of two rows for one key wins, as INSERT OR REPLACE
		// into changes did when each was written.
		`INSERT OR REPLACE INTO changes(disk_id, block, seq, chunk_id)
			SELECT disk_id, block, seq, chunk_id FROM recent_changes ORDER BY disk_id, block, seq, rowid`,
		`DELETE FROM recent_chunks`,
		`DELETE FROM recent_changes`)
	if err != nil {
		return err
	}
	l := c.recent
	l.mu.Lock()
	l.reset()
	l.mu.Unlock()
	c.fold = nil
	c.log.Debug("index recent level folded", "rows", n, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// recentMaxAge bounds how long a row stays in the level: a machine that
// writes little still has its rows in the main tables within minutes, so
// compaction (which looks at chunks colder than 10 minutes, in the main
// table) and the other readers of the main tables see them.
const recentMaxAge = 5 * time.Minute

// foldIfFull folds once the level holds its limit, or its oldest row is
// older than recentMaxAge, in two steps (foldStep). Call with writeMu held.
func (c *core) foldIfFull(ctx context.Context) error {
	l := c.recent
	if l.limit <= 1 {
		return c.foldLocked(ctx) // every write's rows in the main tables: no rounds
	}
	return c.foldStep(ctx)
}

// foldIfOld folds a level whose oldest row is older than recentMaxAge
// (the compactor's tick: a level that stopped growing).
func (c *core) foldIfOld(ctx context.Context) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if err := c.check(); err != nil {
		return err
	}
	return c.foldIfFull(ctx)
}

// settleDisk folds the level if it holds a row of disk with seq <= upTo:
// for a reader of the main tables that looks at those seqs only (a
// committed point's rows, a diff between two points).
func (c *core) settleDisk(ctx context.Context, disk, upTo int64) error {
	if !c.recent.rowsUpTo(disk, upTo) {
		return nil
	}
	return c.settle(ctx)
}

// settle folds the level, so that what follows finds every row in the
// main tables: the entry of each operation that reads them only.
func (c *core) settle(ctx context.Context) error {
	if c.recent.size() == 0 {
		return nil
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if err := c.check(); err != nil {
		return err
	}
	return c.foldLocked(ctx)
}

// lockSettled takes writeMu and folds the level: for the steps of a
// deletion or GC, whose queries read the main tables only and which run in
// several pieces while writers add rows in between.
func (c *core) lockSettled(ctx context.Context) (func(), error) {
	c.writeMu.Lock()
	if err := c.foldLocked(ctx); err != nil {
		c.writeMu.Unlock()
		return nil, err
	}
	return c.writeMu.Unlock, nil
}

// recentLimit is OpenOptions.RecentLimit with its default (0) applied; a
// limit of 0 rows folds after every write transaction.
func recentLimit(n int) int {
	switch {
	case n == 0:
		return defaultRecentLimit
	case n < 0:
		return 0
	}
	return n
}
