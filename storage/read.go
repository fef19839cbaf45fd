package storage

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
)

// headSeq reads the newest rows, the pending point's included.
const headSeq = math.MaxInt64

// rowAt returns the chunk id of block b as of point seq (the newest row at
// or before it): found=false if the block was never written, cid=nil for
// an explicit zero block. O(log n) in the changes table.
func (c *core) rowAt(ctx context.Context, diskID, block, seq int64) (cid *int64, found bool, err error) {
	recent, inRecent := c.recent.rowAt(diskID, block, seq) // first: see recent.go
	var mainSeq int64
	err = c.db.QueryRowContext(ctx, `SELECT chunk_id, seq FROM changes WHERE disk_id=? AND block=? AND seq<=?
		ORDER BY seq DESC LIMIT 1`, diskID, block, seq).Scan(&cid, &mainSeq)
	if errors.Is(err, sql.ErrNoRows) {
		cid, err = nil, nil
	} else if err != nil {
		return nil, false, err
	} else {
		found = true
	}
	if inRecent && (!found || recent.seq >= mainSeq) {
		cid, found = nil, true
		if recent.chunk != 0 {
			cid = &recent.chunk
		}
	}
	return cid, found, nil
}

// rowsAt finds the chunks of blocks as of point seq (each block's newest
// row at or before it), a page of blocks per query: a block never written
// or written as zeros has no entry.
func (c *core) rowsAt(ctx context.Context, diskID, seq int64, blocks []int64) (map[int64]chunkRow, error) {
	out := make(map[int64]chunkRow, len(blocks))
	for len(blocks) > 0 {
		n := min(len(blocks), diffPage)
		list, err := json.Marshal(blocks[:n])
		if err != nil {
			return nil, err
		}
		page := blocks[:n]
		blocks = blocks[n:]
		// The recent level first; its row is the newer (recent.go).
		recent := map[int64]recentRow{}
		for _, b := range page {
			if r, ok := c.recent.rowAt(diskID, b, seq); ok {
				recent[b] = r
			}
		}
		ids, err := c.chunkIDsAt(ctx, diskID, seq, string(list))
		if err != nil {
			return nil, err
		}
		for b, r := range recent {
			if r.chunk == 0 {
				delete(ids, b)
			} else {
				ids[b] = r.chunk
			}
		}
		byID := map[int64][]int64{}
		args := make([]any, 0, len(ids))
		for b, id := range ids {
			if len(byID[id]) == 0 {
				args = append(args, id)
			}
			byID[id] = append(byID[id], b)
		}
		for len(args) > 0 {
			k := min(len(args), locateBatch)
			if err := c.chunkRowsByID(ctx, args[:k], func(row chunkRow) {
				for _, b := range byID[row.id] {
					out[b] = row
				}
				delete(byID, row.id)
			}); err != nil {
				return nil, err
			}
			args = args[k:]
		}
		for id := range byID {
			return nil, fmt.Errorf("%w: chunk id %d", ErrChunkMissing, id)
		}
	}
	return out, nil
}

// chunkIDsAt is the chunk id of each block of the JSON list that has a
// non-zero row as of seq in the main table.
func (c *core) chunkIDsAt(ctx context.Context, diskID, seq int64, list string) (map[int64]int64, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT j.value,
		(SELECT chunk_id FROM changes WHERE disk_id=?1 AND block=j.value AND seq<=?2 ORDER BY seq DESC LIMIT 1)
		FROM json_each(?3) j`, diskID, seq, list)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[int64]int64{}
	for rows.Next() {
		var b int64
		var id *int64
		if err := rows.Scan(&b, &id); err != nil {
			return nil, err
		}
		if id != nil {
			out[b] = *id
		}
	}
	return out, rows.Err()
}

// chunkRowsByID calls fn with the row of each stored chunk of ids.
func (c *core) chunkRowsByID(ctx context.Context, all []any, fn func(chunkRow)) error {
	var ids []any
	for _, id := range all { // the recent level first (recent.go)
		if row, ok := c.recent.chunk(id.(int64)); ok {
			fn(row)
		} else {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	rows, err := c.db.QueryContext(ctx, `SELECT `+chunkCols+` FROM chunks WHERE id IN (?`+strings.Repeat(",?", len(ids)-1)+`)`, ids...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		row, err := scanChunk(rows)
		if err != nil {
			return err
		}
		fn(row)
	}
	return rows.Err()
}

// blockAt returns the content of a block as of seq (zeros if never written).
func (r *Repo) blockAt(ctx context.Context, diskID, block, seq int64, bs int) ([]byte, error) {
	cid, _, err := r.c.rowAt(ctx, diskID, block, seq)
	if err != nil {
		return nil, err
	}
	if cid == nil {
		return make([]byte, bs), nil
	}
	b, err := r.readChunkID(ctx, *cid)
	if err != nil {
		return nil, err
	}
	if len(b) != bs {
		return nil, fmt.Errorf("%w: block %d is %d bytes, disk blocks are %d", ErrCorrupt, block, len(b), bs)
	}
	return b, nil
}

// DiskReader reads one disk as of one point: zeros where never written,
// every chunk checked against its hash (never wrong bytes).
type DiskReader struct {
	r       *Repo
	diskID  int64
	seq     int64
	size    int64
	bs      int
	Disk    string
	PointID int64
}

// OpenDisk opens a disk of a committed point for reading.
func (r *Repo) OpenDisk(ctx context.Context, pointID int64, disk string) (*DiskReader, error) {
	if err := r.c.check(); err != nil {
		return nil, err
	}
	var state string
	err := r.c.db.QueryRowContext(ctx, `SELECT state FROM points WHERE id=?`, pointID).Scan(&state)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && state != "committed") {
		return nil, fmt.Errorf("%w: point %d", ErrNotFound, pointID)
	}
	if err != nil {
		return nil, err
	}
	rd, err := r.diskReader(ctx, pointID, pointID, disk)
	if err != nil {
		return nil, err
	}
	// Its reads (eachRow) look at the main table: fold the recent level if
	// it holds rows of this point or older ones. Its later rows are of later
	// points (recent.go), which this reader never reads.
	if err := r.c.settleDisk(ctx, rd.diskID, pointID); err != nil {
		return nil, err
	}
	return rd, nil
}

func (r *Repo) diskReader(ctx context.Context, pointID, seq int64, disk string) (*DiskReader, error) {
	ds, ids, err := r.c.pointDisks(ctx, pointID)
	if err != nil {
		return nil, err
	}
	for i, d := range ds {
		if d.Name == disk {
			return &DiskReader{r: r, diskID: ids[i], seq: seq, size: d.Size, bs: d.BlockSize, Disk: disk, PointID: pointID}, nil
		}
	}
	return nil, fmt.Errorf("%w: disk %q in point %d", ErrNotFound, disk, pointID)
}

// Size is the disk's virtual size at the point.
func (d *DiskReader) Size() int64 { return d.size }

// BlockSize is the disk's block size.
func (d *DiskReader) BlockSize() int { return d.bs }

func (d *DiskReader) nblocks() int64 { return (d.size + int64(d.bs) - 1) / int64(d.bs) }

// ReadBlock returns one whole block.
func (d *DiskReader) ReadBlock(ctx context.Context, block int64) ([]byte, error) {
	if block < 0 || block >= d.nblocks() {
		return nil, fmt.Errorf("storage: block %d outside disk %q of %d blocks", block, d.Disk, d.nblocks())
	}
	return d.r.blockAt(ctx, d.diskID, block, d.seq, d.bs)
}

// BlockHash returns a block's content hash; zero=true (and a zero Hash) for
// a block that is all zeros by record or never written.
func (d *DiskReader) BlockHash(ctx context.Context, block int64) (Hash, bool, error) {
	cid, _, err := d.r.c.rowAt(ctx, d.diskID, block, d.seq)
	if err != nil || cid == nil {
		return Hash{}, true, err
	}
	row, err := d.r.c.chunkByID(ctx, *cid)
	if err != nil {
		return Hash{}, false, err
	}
	return row.hash, false, nil
}

// ReadAt implements io.ReaderAt over the disk's virtual size.
func (d *DiskReader) ReadAt(p []byte, off int64) (int, error) {
	ctx := context.Background()
	if off < 0 {
		return 0, fmt.Errorf("storage: negative offset %d", off)
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= d.size {
			return n, io.EOF
		}
		blk := pos / int64(d.bs)
		b, err := d.ReadBlock(ctx, blk)
		if err != nil {
			return n, err
		}
		in := pos - blk*int64(d.bs)
		lim := int64(len(b))
		if end := d.size - blk*int64(d.bs); end < lim {
			lim = end
		}
		n += copy(p[n:], b[in:lim])
	}
	return n, nil
}

// blockRow is one block's newest row as of a point.
type blockRow struct {
	block int64
	cid   *int64
	hash  Hash
}

// rowsPage returns up to limit newest rows of blocks > after, ascending.
func (c *core) rowsPage(ctx context.Context, diskID, seq, after int64, limit int) ([]blockRow, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT g.block, g.chunk_id, k.hash FROM
		(SELECT block, chunk_id, max(seq) FROM changes WHERE disk_id=? AND block>? AND seq<=?
		 GROUP BY block ORDER BY block LIMIT ?) g
		LEFT JOIN chunks k ON k.id = g.chunk_id ORDER BY g.block`, diskID, after, seq, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []blockRow
	for rows.Next() {
		var br blockRow
		var h []byte
		if err := rows.Scan(&br.block, &br.cid, &h); err != nil {
			return nil, err
		}
		if br.cid != nil && h == nil {
			return nil, fmt.Errorf("%w: block %d names chunk id %d, which is not stored", ErrCorrupt, br.block, *br.cid)
		}
		copy(br.hash[:], h)
		out = append(out, br)
	}
	return out, rows.Err()
}

const pageRows = 4096

// Blocks calls fn for every block that has a row at or before the point,
// ascending, explicit zero blocks included.
func (d *DiskReader) Blocks(ctx context.Context, fn BlockFunc) error {
	return d.r.c.eachRow(ctx, d.diskID, d.seq, func(br blockRow) error {
		if br.block >= d.nblocks() {
			return nil
		}
		return fn(br.block, br.hash, br.cid == nil)
	})
}

func (c *core) eachRow(ctx context.Context, diskID, seq int64, fn func(blockRow) error) error {
	after := int64(-1)
	for {
		page, err := c.rowsPage(ctx, diskID, seq, after, pageRows)
		if err != nil {
			return err
		}
		for _, br := range page {
			if err := fn(br); err != nil {
				return err
			}
		}
		if len(page) < pageRows {
			return nil
		}
		after = page[len(page)-1].block
	}
}

// WriteTo streams the whole virtual disk (zeros where never written).
func (d *DiskReader) WriteTo(w io.Writer) (int64, error) {
	ctx := context.Background()
	zero := make([]byte, d.bs)
	var written int64
	put := func(b []byte) error {
		if rem := d.size - written; int64(len(b)) > rem {
			b = b[:rem]
		}
		n, err := w.Write(b)
		written += int64(n)
		return err
	}
	next := int64(0)
	err := d.r.c.eachRow(ctx, d.diskID, d.seq, func(br blockRow) error {
		if br.block >= d.nblocks() {
			return nil
		}
		for ; next < br.block; next++ {
			if err := put(zero); err != nil {
				return err
			}
		}
		next = br.block + 1
		if br.cid == nil {
			return put(zero)
		}
		b, err := d.r.readChunkID(ctx, *br.cid)
		if err != nil {
			return fmt.Errorf("block %d: %w", br.block, err)
		}
		if len(b) != d.bs {
			return fmt.Errorf("%w: block %d is %d bytes", ErrCorrupt, br.block, len(b))
		}
		return put(b)
	})
	if err != nil {
		return written, err
	}
	for ; next < d.nblocks(); next++ {
		if err := put(zero); err != nil {
			return written, err
		}
	}
	return written, nil
}

// HeadBlocks calls fn for every block of the machine's disk in its newest
// state, the pending point included (an agent's hash resync).
func (r *Repo) HeadBlocks(ctx context.Context, machine, disk string, fn BlockFunc) error {
	if err := r.c.check(); err != nil {
		return err
	}
	did, err := r.c.diskID(ctx, machine, disk)
	if err != nil {
		return err
	}
	if err := r.c.settleDisk(ctx, did, headSeq); err != nil {
		return err
	}
	return r.c.eachRow(ctx, did, headSeq, func(br blockRow) error { return fn(br.block, br.hash, br.cid == nil) })
}

func (c *core) diskID(ctx context.Context, machine, disk string) (int64, error) {
	var id int64
	err := c.db.QueryRowContext(ctx, `SELECT id FROM disks WHERE machine=? AND name=?`, machine, disk).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("%w: disk %s/%s", ErrNotFound, machine, disk)
	}
	return id, err
}

// Diff calls fn, ascending, for every block whose content differs between
// point from (0 = an empty disk) and point to, with its content at to; the
// points may be in either order. Cost: O(rows between them).
func (r *Repo) Diff(ctx context.Context, machine, disk string, from, to int64, fn BlockFunc) error {
	c := r.c
	if err := c.check(); err != nil {
		return err
	}
	for _, id := range []int64{from, to} {
		if id == 0 {
			continue
		}
		p, err := r.Point(ctx, id)
		if err != nil {
			return err
		}
		if p.Machine != machine {
			return fmt.Errorf("%w: point %d belongs to %q, not %q", ErrNotFound, id, p.Machine, machine)
		}
	}
	did, err := c.diskID(ctx, machine, disk)
	if err != nil {
		return err
	}
	lo, hi := min(from, to), max(from, to)
	// Candidates from the recent level first, then the main table (see
	// recent.go); a staging diff to the newest point runs every cycle, so
	// it merges the level rather than fold it.
	recent := c.recent.blocksBetween(did, lo, hi)
	cand, err := column[int64](c.db.QueryContext(ctx, `SELECT DISTINCT block FROM changes WHERE disk_id=? AND seq>? AND seq<=?`, did, lo, hi))
	if err != nil {
		return err
	}
	cand = append(cand, recent...)
	sort.Slice(cand, func(i, j int) bool { return cand[i] < cand[j] })
	cand = slices.Compact(cand)
	for len(cand) > 0 {
		n := min(len(cand), diffPage)
		page, err := c.diffRows(ctx, did, from, to, cand[:n])
		if err != nil {
			return err
		}
		cand = cand[n:]
		for _, d := range page {
			if err := fn(d.block, d.hash, d.zero); err != nil {
				return err
			}
		}
	}
	return nil
}

// diffPage is how many candidate blocks one query of Diff resolves: one
// query instead of three per block, because every reader and writer of the
// index shares one connection (a move's diff under a plan's concurrent
// cycles and moves took 100–200 ms as three queries per block).
const diffPage = 1024

// diffRow is a block whose content differs between two points, with its
// content at the second.
type diffRow struct {
	block int64
	zero  bool
	hash  Hash
}

// diffRows resolves candidate blocks (ascending): each block's newest row
// as of from and as of to (a point id of 0 has no rows), the recent
// level's winning, keeping those whose chunk differs. The rows are read and
// closed before the caller's function runs, which may query the index
// itself.
func (c *core) diffRows(ctx context.Context, diskID, from, to int64, blocks []int64) ([]diffRow, error) {
	list, err := json.Marshal(blocks)
	if err != nil {
		return nil, err
	}
	// 0 below: no row, or a zero block (chunk ids start at 1).
	type ends struct{ a, z int64 }
	at := make(map[int64]*ends, len(blocks))
	recent := map[int64]ends{} // first: see recent.go
	has := map[int64][2]bool{}
	for _, b := range blocks {
		ra, okA := c.recent.rowAt(diskID, b, from)
		rz, okZ := c.recent.rowAt(diskID, b, to)
		if okA || okZ {
			recent[b] = ends{ra.chunk, rz.chunk}
			has[b] = [2]bool{okA, okZ}
		}
	}
	rows, err := c.db.QueryContext(ctx, `SELECT j.value,
		(SELECT chunk_id FROM changes WHERE disk_id=?1 AND block=j.value AND seq<=?2 ORDER BY seq DESC LIMIT 1),
		(SELECT chunk_id FROM changes WHERE disk_id=?1 AND block=j.value AND seq<=?3 ORDER BY seq DESC LIMIT 1)
		FROM json_each(?4) j`, diskID, from, to, string(list))
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var b int64
		var a, z sql.NullInt64
		if err := rows.Scan(&b, &a, &z); err != nil {
			rows.Close()
			return nil, err
		}
		at[b] = &ends{a.Int64, z.Int64}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []diffRow
	var ids []any
	for _, b := range blocks {
		e := at[b]
		if e == nil {
			e = &ends{}
			at[b] = e
		}
		if r, ok := recent[b]; ok {
			if has[b][0] {
				e.a = r.a
			}
			if has[b][1] {
				e.z = r.z
			}
		}
		if e.a == e.z {
			continue // the same content at both
		}
		out = append(out, diffRow{block: b, zero: e.z == 0})
		if e.z != 0 {
			ids = append(ids, e.z)
		}
	}
	hashes := map[int64]Hash{}
	for len(ids) > 0 {
		k := min(len(ids), locateBatch)
		if err := c.chunkRowsByID(ctx, ids[:k], func(row chunkRow) { hashes[row.id] = row.hash }); err != nil {
			return nil, err
		}
		ids = ids[k:]
	}
	for i := range out {
		if out[i].zero {
			continue
		}
		z := at[out[i].block].z
		h, ok := hashes[z]
		if !ok {
			return nil, fmt.Errorf("%w: chunk id %d", ErrChunkMissing, z)
		}
		out[i].hash = h
	}
	return out, nil
}

// Blocks calls fn, ascending, for every block this pending point has
// stored on disk (its own rows: what the running cycle changed so far, zero
// blocks included), e.g. so that a resumed cycle can recheck them.
func (p *Pending) Blocks(ctx context.Context, disk string, fn BlockFunc) error {
	c := p.r.c
	if err := c.check(); err != nil {
		return err
	}
	did, ok := p.diskIDs[disk]
	if !ok {
		return fmt.Errorf("%w: disk %q is not part of pending point %d", ErrNotFound, disk, p.ID)
	}
	if err := c.settleDisk(ctx, did, p.ID); err != nil {
		return err
	}
	after := int64(-1)
	for {
		rows, err := c.db.QueryContext(ctx, `SELECT c.block, c.chunk_id, k.hash FROM changes c
			LEFT JOIN chunks k ON k.id = c.chunk_id
			WHERE c.disk_id=? AND c.seq=? AND c.block>? ORDER BY c.block LIMIT ?`, did, p.ID, after, pageRows)
		if err != nil {
			return err
		}
		var page []blockRow
		for rows.Next() {
			var br blockRow
			var h []byte
			if err := rows.Scan(&br.block, &br.cid, &h); err != nil {
				rows.Close()
				return err
			}
			copy(br.hash[:], h)
			page = append(page, br)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, br := range page {
			if err := fn(br.block, br.hash, br.cid == nil); err != nil {
				return err
			}
		}
		if len(page) < pageRows {
			return nil
		}
		after = page[len(page)-1].block
	}
}
