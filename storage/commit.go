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
		for {
			chs, err := c.pointChanges(ctx, diskIDs[i], p.ID, after, c.partEntries-n)
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
// > after, ascending.
func (c *core) pointChanges(ctx context.Context, diskID, seq, after int64, limit int) ([]pack.Change, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT c.block, c.chunk_id, k.hash FROM changes c LEFT JOIN chunks k ON k.id = c.chunk_id
		WHERE c.disk_id=? AND c.seq=? AND c.block>? ORDER BY c.block LIMIT ?`, diskID, seq, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []pack.Change
	for rows.Next() {
		var ch pack.Change
		var h []byte
		var cid *int64
		if err := rows.Scan(&ch.Block, &cid, &h); err != nil {
			return nil, err
		}
		if cid != nil && h == nil {
			return nil, fmt.Errorf("%w: block %d of point %d names chunk id %d, which is not stored", ErrCorrupt, ch.Block, seq, *cid)
		}
		if cid == nil {
			ch.Zero = true
		} else {
			copy(ch.Hash[:], h)
		}
		out = append(out, ch)
	}
	return out, rows.Err()
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
