package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/ferrydr/ferry/storage/internal/pack"
)

// DeleteMachine removes a machine: all its points, its pending point and
// every row of its disks. A machine tombstone record is made durable first
// so that Rebuild does not bring any of it back.
func (r *Repo) DeleteMachine(ctx context.Context, machine string) error {
	c := r.c
	if err := c.check(); err != nil {
		return err
	}
	if _, err := c.lockSettled(ctx); err != nil {
		return err
	}
	var maxID sql.NullInt64
	if err := c.db.QueryRowContext(ctx, `SELECT max(id) FROM points WHERE machine=?`, machine).Scan(&maxID); err != nil {
		c.writeMu.Unlock()
		return err
	}
	disks, err := c.machineDisks(ctx, machine)
	if err != nil {
		c.writeMu.Unlock()
		return err
	}
	if !maxID.Valid && len(disks) == 0 {
		c.writeMu.Unlock()
		return fmt.Errorf("%w: machine %q", ErrNotFound, machine)
	}
	err = c.recordDeletion(ctx, pack.Delete{PointID: uint64(maxID.Int64), Machine: machine, DeletedNs: c.clock().UnixNano()}, pack.DeleteMachineFlag, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE points SET state='deleted' WHERE machine=?`, machine); err != nil {
			return err
		}
		// New disks of a machine of the same name get new ids, so rows
		// not yet removed below are never read again.
		_, err := tx.ExecContext(ctx, `DELETE FROM disks WHERE machine=?`, machine)
		return err
	})
	c.writeMu.Unlock()
	if err != nil {
		return err
	}
	for _, d := range disks {
		if err := c.dropDiskRows(ctx, d); err != nil {
			return err
		}
	}
	return nil
}

// dropDiskRows deletes every row of a disk id in bounded transactions.
func (c *core) dropDiskRows(ctx context.Context, disk int64) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := c.lockSettled(ctx); err != nil {
			return err
		}
		var edge sql.NullInt64
		err := c.db.QueryRowContext(ctx, `SELECT block FROM changes WHERE disk_id=? ORDER BY block LIMIT 1 OFFSET ?`,
			disk, deleteBatchRows).Scan(&edge)
		if errors.Is(err, sql.ErrNoRows) {
			err = nil
		}
		if err == nil && edge.Valid {
			_, err = c.db.ExecContext(ctx, `DELETE FROM changes WHERE disk_id=? AND block<=?`, disk, edge.Int64)
		} else if err == nil {
			_, err = c.db.ExecContext(ctx, `DELETE FROM changes WHERE disk_id=?`, disk)
			if err == nil {
				_, err = c.db.ExecContext(ctx, `DELETE FROM point_disks WHERE disk_id=?`, disk)
			}
		}
		c.writeMu.Unlock()
		if err != nil || !edge.Valid {
			return err
		}
	}
}

// Stats are repository totals.
type Stats struct {
	Packs       int64
	Chunks      int64
	StoredBytes int64 // bytes of all pack files as indexed
	Points      int64 // committed points
}

// Stats returns repository totals.
func (r *Repo) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	if err := r.c.check(); err != nil {
		return s, err
	}
	err := r.c.db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM packs), (SELECT count(*) FROM chunks) + (SELECT count(*) FROM recent_chunks),
		(SELECT coalesce(sum(size), 0) FROM packs), (SELECT count(*) FROM points WHERE state='committed')`).
		Scan(&s.Packs, &s.Chunks, &s.StoredBytes, &s.Points)
	return s, err
}
