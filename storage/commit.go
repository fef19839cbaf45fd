package storage

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/ferrydr/ferry/storage/internal/pack"
)

func validConsistency(c Consistency) error {
	switch c {
	case AppConsistent, CrashConsistent, Inconsistent:
		return nil
	}
	return fmt.Errorf("storage: consistency %q is not one of %q, %q, %q", c, AppConsistent, CrashConsistent, Inconsistent)
}

// Commit makes the pending point a recovery point, atomically: its changes
// and a commit record are appended to the open pack and fdatasync'd (so
// Rebuild can restore it), then one index transaction marks it committed.
// The point exists if and only if Commit returned it.
func (p *Pending) Commit(ctx context.Context, info CommitInfo) (Point, error) {
	c := p.r.c
	if err := c.check(); err != nil {
		return Point{}, err
	}
	if err := validConsistency(info.Consistency); err != nil {
		return Point{}, err
	}
	if len(info.Name) > maxNameLen {
		return Point{}, fmt.Errorf("storage: point name of %d bytes over %d", len(info.Name), maxNameLen)
	}
	if err := p.settlePatchChecks(ctx); err != nil {
		return Point{}, err
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if err := c.check(); err != nil {
		return Point{}, err
	}
	var state string
	var bytes int64
	if err := c.db.QueryRowContext(ctx, `SELECT state, bytes FROM points WHERE id=?`, p.ID).Scan(&state, &bytes); err != nil || state != "pending" {
		return Point{}, fmt.Errorf("%w: point %d is not pending", ErrNotFound, p.ID)
	}
	disks, diskIDs, err := c.pointDisks(ctx, p.ID)
	if err != nil {
		return Point{}, err
	}
	if disks, diskIDs, err = c.dropLeftDisks(ctx, p, disks, diskIDs); err != nil {
		return Point{}, err
	}
	// A disk that shrank: the cut-off blocks become zero rows of this
	// point (storage/truncate.go), before its records are written.
	if err := c.tombstoneTruncated(ctx, p.ID, disks, diskIDs); err != nil {
		return Point{}, err
	}
	instant := info.Instant
	if instant.IsZero() {
		instant = c.clock()
	}
	now := c.clock()
	var serial uint32
	if info.Name != "" {
		serial = 1
	}
	// The point's rows, by disk, as change records of at most
	// MaxChangesPerRecord entries, read and written in pages so that a
	// point of millions of blocks (an initial sync) needs bounded memory.
	// All of a point's records go to one pack: the pack is not rotated
	// until the index commit.
	b, err := c.newBatch(ctx)
	if err != nil {
		return Point{}, err
	}
	batches := []*batch{b}
	part, changed := uint32(0), int64(0)
	cur := pack.Changes{PointID: uint64(p.ID), Machine: p.Machine}
	n := 0
	emit := func() error {
		cur.Part = part
		part++
		b.add(pack.TypePointChanges, 0, pack.EncodeChanges(cur), Hash{}, p.ID)
		cur = pack.Changes{PointID: uint64(p.ID), Machine: p.Machine}
		n = 0
		if len(b.buf) >= c.commitFlush {
			if err := c.flush(b); err != nil {
				return err
			}
			b = b.next()
			batches = append(batches, b)
		}
		return nil
	}
	for i, d := range disks {
		after := int64(-1)
		recent := c.recent.pointRows(diskIDs[i], p.ID, after)
		for {
			var chs []pack.Change
			chs, recent, err = c.pointChanges(ctx, diskIDs[i], p.ID, after, c.partEntries-n, recent)
			if err != nil {
				return Point{}, err
			}
			if len(chs) == 0 {
				break
			}
			after = chs[len(chs)-1].Block
			changed += int64(len(chs))
			cur.Disks = append(cur.Disks, pack.DiskChanges{Disk: d.Name, Changes: chs})
			n += len(chs)
			if n == c.partEntries {
				if err := emit(); err != nil {
					return Point{}, err
				}
			}
		}
	}
	if len(cur.Disks) > 0 || part == 0 {
		if err := emit(); err != nil {
			return Point{}, err
		}
	}
	cm := pack.Commit{
		PointID: uint64(p.ID), Machine: p.Machine, InstantNs: instant.UnixNano(), CommittedNs: now.UnixNano(),
		Consistency: string(info.Consistency), Name: info.Name, LabelSerial: serial,
		Bytes: bytes, Changed: changed, Parts: part,
	}
	for _, d := range disks {
		cm.Disks = append(cm.Disks, pack.DiskSpec{Name: d.Name, Size: d.Size, BlockSize: uint32(d.BlockSize)})
	}
	b.add(pack.TypePointCommit, 0, pack.EncodeCommit(cm), Hash{}, p.ID)
	if err := c.flush(b); err != nil {
		return Point{}, err
	}
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return Point{}, err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `UPDATE points SET state='committed', instant_ns=?, consistency=?, name=?,
		label_serial=?, changed=?, committed_ns=? WHERE id=? AND state='pending'`,
		cm.InstantNs, cm.Consistency, cm.Name, serial, changed, cm.CommittedNs, p.ID)
	if err != nil {
		return Point{}, err
	}
	if k, _ := res.RowsAffected(); k != 1 {
		return Point{}, fmt.Errorf("%w: point %d is not pending", ErrNotFound, p.ID)
	}
	for _, bb := range batches {
		if err := c.indexBatch(ctx, tx, bb); err != nil {
			return Point{}, err
		}
	}
	if err := markTruncationChecked(ctx, tx, diskIDs); err != nil {
		return Point{}, err
	}
	if err := tx.Commit(); err != nil {
		return Point{}, err
	}
	c.fail(FailIndexCommited)
	for _, bb := range batches {
		c.advance(bb)
	}
	c.maybeSeal(ctx)
	return Point{
		ID: p.ID, Machine: p.Machine, Instant: instant, Consistency: info.Consistency, Name: info.Name,
		Bytes: bytes, Changed: changed, Disks: disks, Committed: now,
	}, nil
}

// commitFlushBytes bounds the memory of a large commit's records.
const commitFlushBytes = 16 << 20

// pointChanges lists up to limit rows a point wrote on one disk with block
// > after, ascending: the main table's, and the recent level's (recent,
// ascending, of which it returns what it did not take; its row wins).
func (c *core) pointChanges(ctx context.Context, diskID, seq, after int64, limit int, recent []recentChange) ([]pack.Change, []recentChange, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT c.block, c.chunk_id, k.hash FROM changes c LEFT JOIN chunks k ON k.id = c.chunk_id
		WHERE c.disk_id=? AND c.seq=? AND c.block>? ORDER BY c.block LIMIT ?`, diskID, seq, after, limit)
	if err != nil {
		return nil, recent, err
	}
	var main []pack.Change
	for rows.Next() {
		var ch pack.Change
		var h []byte
		var cid *int64
		if err := rows.Scan(&ch.Block, &cid, &h); err != nil {
			rows.Close()
			return nil, recent, err
		}
		if cid != nil && h == nil {
			rows.Close()
			return nil, recent, fmt.Errorf("%w: block %d of point %d names chunk id %d, which is not stored", ErrCorrupt, ch.Block, seq, *cid)
		}
		if cid == nil {
			ch.Zero = true
		} else {
			copy(ch.Hash[:], h)
		}
		main = append(main, ch)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, recent, err
	}
	var out []pack.Change
	var ids []any
	fromRecent := map[int]int64{} // index in out → chunk id
	for len(out) < limit && (len(main) > 0 || len(recent) > 0) {
		switch {
		case len(recent) == 0 || (len(main) > 0 && main[0].Block < recent[0].block):
			out, main = append(out, main[0]), main[1:]
			continue
		case len(main) > 0 && main[0].Block == recent[0].block:
			main = main[1:] // the recent row replaced it
		}
		r := recent[0]
		recent = recent[1:]
		ch := pack.Change{Block: r.block, Zero: r.chunk == 0}
		if r.chunk != 0 {
			fromRecent[len(out)] = r.chunk
			ids = append(ids, r.chunk)
		}
		out = append(out, ch)
	}
	hashes := map[int64]Hash{}
	for len(ids) > 0 {
		k := min(len(ids), locateBatch)
		if err := c.chunkRowsByID(ctx, ids[:k], func(row chunkRow) { hashes[row.id] = row.hash }); err != nil {
			return nil, recent, err
		}
		ids = ids[k:]
	}
	for i, id := range fromRecent {
		h, ok := hashes[id]
		if !ok {
			return nil, recent, fmt.Errorf("%w: block %d of point %d names chunk id %d, which is not stored", ErrCorrupt, out[i].Block, seq, id)
		}
		out[i].Hash = h
	}
	return out, recent, nil
}

// dropLeftDisks takes out of pending point p the disks an earlier attempt
// of it had and the attempt being committed did not begin with (a disk
// removed from the machine meanwhile), with the rows that attempt wrote of
// them, so that the index keeps only what the commit records: the point
// lists the disks of its last attempt. Call with writeMu held.
func (c *core) dropLeftDisks(ctx context.Context, p *Pending, disks []DiskSpec, ids []int64) ([]DiskSpec, []int64, error) {
	if p.only == nil {
		return disks, ids, nil
	}
	var keptDisks []DiskSpec
	var keptIDs []int64
	var left []int64
	for i, d := range disks {
		if p.only[d.Name] {
			keptDisks, keptIDs = append(keptDisks, d), append(keptIDs, ids[i])
		} else {
			left = append(left, ids[i])
		}
	}
	if len(left) == 0 {
		return disks, ids, nil
	}
	if err := c.foldLocked(ctx); err != nil { // the rows to drop may be recent
		return nil, nil, err
	}
	err := c.inTx(ctx, func(tx *sql.Tx) error {
		for _, did := range left {
			if _, err := tx.ExecContext(ctx, `DELETE FROM point_disks WHERE point_id=? AND disk_id=?`, p.ID, did); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM changes WHERE seq=? AND disk_id=?`, p.ID, did); err != nil {
				return err
			}
		}
		return nil
	})
	return keptDisks, keptIDs, err
}
