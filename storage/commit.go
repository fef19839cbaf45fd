package storage

import (
	"context"
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
	// The point's rows, by disk, as change records of bounded size.
	var parts []pack.Changes
	cur := pack.Changes{PointID: uint64(p.ID), Machine: p.Machine}
	n, changed := 0, int64(0)
	for i, d := range disks {
		chs, err := c.pointChanges(ctx, diskIDs[i], p.ID)
		if err != nil {
			return Point{}, err
		}
		changed += int64(len(chs))
		for len(chs) > 0 {
			take := min(len(chs), pack.MaxChangesPerRecord-n)
			cur.Disks = append(cur.Disks, pack.DiskChanges{Disk: d.Name, Changes: chs[:take]})
			chs = chs[take:]
			n += take
			if n == pack.MaxChangesPerRecord {
				cur.Part = uint32(len(parts))
				parts = append(parts, cur)
				cur = pack.Changes{PointID: uint64(p.ID), Machine: p.Machine}
				n = 0
			}
		}
	}
	if len(cur.Disks) > 0 || len(parts) == 0 {
		cur.Part = uint32(len(parts))
		parts = append(parts, cur)
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
	cm := pack.Commit{
		PointID: uint64(p.ID), Machine: p.Machine, InstantNs: instant.UnixNano(), CommittedNs: now.UnixNano(),
		Consistency: string(info.Consistency), Name: info.Name, LabelSerial: serial,
		Bytes: bytes, Changed: changed, Parts: uint32(len(parts)),
	}
	for _, d := range disks {
		cm.Disks = append(cm.Disks, pack.DiskSpec{Name: d.Name, Size: d.Size, BlockSize: uint32(d.BlockSize)})
	}
	b, err := c.newBatch(ctx)
	if err != nil {
		return Point{}, err
	}
	for _, part := range parts {
		b.add(pack.TypePointChanges, 0, pack.EncodeChanges(part), Hash{}, p.ID)
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
	if err := c.indexBatch(ctx, tx, b); err != nil {
		return Point{}, err
	}
	if err := tx.Commit(); err != nil {
		return Point{}, err
	}
	c.fail(FailIndexCommited)
	c.finish(ctx, b)
	return Point{
		ID: p.ID, Machine: p.Machine, Instant: instant, Consistency: info.Consistency, Name: info.Name,
		Bytes: bytes, Changed: changed, Disks: disks, Committed: now,
	}, nil
}

// pointChanges lists the rows a point wrote on one disk, ascending.
func (c *core) pointChanges(ctx context.Context, diskID, seq int64) ([]pack.Change, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT c.block, c.chunk_id, k.hash FROM changes c LEFT JOIN chunks k ON k.id = c.chunk_id
		WHERE c.disk_id=? AND c.seq=? ORDER BY c.block`, diskID, seq)
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
