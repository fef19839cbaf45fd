package storage

import (
	"context"
	"database/sql"
	"math"
)

// A disk's size may change from point to point. A shrink cuts blocks off;
// when the disk grows again, those blocks read zeros at the source (a
// truncated file, a shrunk volume), so the repository must not hand the
// old rows back. Commit therefore records the cut: every block at or
// beyond the committing point's size whose newest row holds data gets a
// zero row in that point (a tombstone, an ordinary zero row in the
// point's change records). See docs/storage-format.md "Size changes".
//
// Invariant (after each commit of point L, for each disk of L): every
// block at or beyond L's size has a zero newest row or none. Deleting
// points and GC never drop a block's newest row, so it holds until the
// next commit. A commit of point p with size S then needs to look only at
//   - blocks in [blocks(S), blocks(S_L)) when S < S_L (the cut; any seq),
//   - p's own rows at or beyond blocks(S) (written by an earlier cycle of
//     the same pending point while the disk was larger),
// where L is the newest earlier point that has the disk: O(the cut + an
// index seek), nothing for a commit whose size did not shrink. Disks that
// an older build wrote (disks.truncation_checked = 0) get one full pass at
// their first commit: every block at or beyond the smallest size the disk
// ever had is checked against the sizes of the points since its newest
// row.

// truncateBatch bounds one transaction of tombstone rows.
const truncateBatch = 8192

// pointSize is a disk's size in one point.
type pointSize struct {
	point int64
	size  int64
}

func blocksOf(size int64, bs int) int64 { return (size + int64(bs) - 1) / int64(bs) }

// tombstoneTruncated writes the zero rows that pending point p must hold
// on each disk (see above). Call with writeMu held.
func (c *core) tombstoneTruncated(ctx context.Context, p int64, disks []DiskSpec, ids []int64) error {
	for i, d := range disks {
		if err := c.tombstoneDisk(ctx, p, d, ids[i]); err != nil {
			return err
		}
	}
	return nil
}

func (c *core) tombstoneDisk(ctx context.Context, p int64, d DiskSpec, did int64) error {
	var checked bool
	if err := c.db.QueryRowContext(ctx, `SELECT truncation_checked FROM disks WHERE id=?`, did).Scan(&checked); err != nil {
		return err
	}
	n := blocksOf(d.Size, d.BlockSize)
	// hist: the disk's sizes in earlier points (ascending), then p's.
	var hist []pointSize
	q := `SELECT point_id, size FROM point_disks WHERE disk_id=? AND point_id<? ORDER BY point_id DESC LIMIT 1`
	if !checked {
		q = `SELECT point_id, size FROM point_disks WHERE disk_id=? AND point_id<? ORDER BY point_id DESC`
	}
	rows, err := c.db.QueryContext(ctx, q, did, p)
	if err != nil {
		return err
	}
	for rows.Next() {
		var ps pointSize
		if err := rows.Scan(&ps.point, &ps.size); err != nil {
			rows.Close()
			return err
		}
		hist = append([]pointSize{ps}, hist...)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	hist = append(hist, pointSize{point: p, size: d.Size})

	// The block range whose rows of any seq are candidates: [lo, hi).
	lo, hi := n, n
	if checked {
		if len(hist) > 1 {
			hi = max(n, blocksOf(hist[0].size, d.BlockSize))
		}
	} else {
		smallest := d.Size
		for _, ps := range hist {
			smallest = min(smallest, ps.size)
		}
		lo, hi = blocksOf(smallest, d.BlockSize), math.MaxInt64
	}
	// minSince(s): the smallest size of the disk in the points from s to p.
	minSince := func(s int64) int64 {
		m := d.Size
		for _, ps := range hist {
			if ps.point >= s {
				m = min(m, ps.size)
			}
		}
		return m
	}
	// The queries below read the main table: a cut (or a first full pass)
	// reads rows of earlier points, and the point's own rows at or beyond
	// its size may be recent. Fold first then (rare: a disk that shrank);
	// a commit whose disk did not shrink, or a disk's first, has nothing to
	// look at but the point's own rows.
	if (len(hist) > 1 && hi > lo) || len(c.recent.pointRows(did, p, lo-1)) > 0 {
		if err := c.foldLocked(ctx); err != nil {
			return err
		}
	}
	var cut []int64
	flush := func() error {
		if len(cut) == 0 {
			return nil
		}
		err := c.inTx(ctx, func(tx *sql.Tx) error {
			st, err := tx.PrepareContext(ctx, `INSERT OR REPLACE INTO changes(disk_id, block, seq, chunk_id) VALUES (?, ?, ?, NULL)`)
			if err != nil {
				return err
			}
			defer st.Close()
			for _, b := range cut {
				if _, err := st.ExecContext(ctx, did, b, p); err != nil {
					return err
				}
			}
			return nil
		})
		cut = cut[:0]
		return err
	}
	// Candidates of any seq in [lo, hi): the newest row at or before p.
	after := lo - 1
	for hi > lo {
		page, err := c.newestRows(ctx, did, p, after, hi, truncateBatch)
		if err != nil {
			return err
		}
		for _, r := range page {
			if r.cid != nil && r.block >= blocksOf(minSince(r.seq), d.BlockSize) {
				cut = append(cut, r.block)
			}
		}
		if err := flush(); err != nil {
			return err
		}
		if len(page) < truncateBatch {
			break
		}
		after = page[len(page)-1].block
	}
	// p's own data rows at or beyond hi (its seq is the newest).
	if hi != math.MaxInt64 {
		after = hi - 1
		for {
			blocks, err := column[int64](c.db.QueryContext(ctx, `SELECT block FROM changes WHERE disk_id=? AND seq=? AND block>?
				AND chunk_id IS NOT NULL ORDER BY block LIMIT ?`, did, p, after, truncateBatch))
			if err != nil {
				return err
			}
			cut = append(cut, blocks...)
			if err := flush(); err != nil {
				return err
			}
			if len(blocks) < truncateBatch {
				break
			}
			after = blocks[len(blocks)-1]
		}
	}
	return nil
}

// newestRow is a block's newest row at or before some seq.
type newestRow struct {
	block, seq int64
	cid        *int64
}

// newestRows returns up to limit blocks in (after, before) with their
// newest row at or before seq, ascending.
func (c *core) newestRows(ctx context.Context, did, seq, after, before int64, limit int) ([]newestRow, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT block, chunk_id, max(seq) FROM changes
		WHERE disk_id=? AND block>? AND block<? AND seq<=? GROUP BY block ORDER BY block LIMIT ?`, did, after, before, seq, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []newestRow
	for rows.Next() {
		var r newestRow
		if err := rows.Scan(&r.block, &r.cid, &r.seq); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// markTruncationChecked records, in the commit's transaction, that the
// disks' rows now satisfy the invariant above.
func markTruncationChecked(ctx context.Context, tx *sql.Tx, ids []int64) error {
	for _, id := range ids {
		if _, err := tx.ExecContext(ctx, `UPDATE disks SET truncation_checked=1 WHERE id=? AND truncation_checked=0`, id); err != nil {
			return err
		}
	}
	return nil
}
