package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Pending is a machine's point under construction: the data of an
// incomplete cycle. Writes are durable when Write returns; the point becomes
// a recovery point only when Commit returns.
type Pending struct {
	r       *Repo
	ID      int64
	Machine string
	Disks   []DiskSpec
	diskIDs map[string]int64
	specs   map[string]DiskSpec
	// only names the disks this attempt of the point began with
	// (BeginPoint); nil when loaded otherwise. Commit drops a disk an
	// earlier attempt had and this one has not (removed from the machine).
	only map[string]bool
}

func validName(kind, s string) error {
	if s == "" || len(s) > maxNameLen {
		return fmt.Errorf("storage: %s name %q must be 1..%d bytes", kind, s, maxNameLen)
	}
	return nil
}

func validDisks(disks []DiskSpec) error {
	if len(disks) == 0 {
		return errors.New("storage: a point needs at least one disk")
	}
	seen := map[string]bool{}
	for _, d := range disks {
		if err := validName("disk", d.Name); err != nil {
			return err
		}
		if seen[d.Name] {
			return fmt.Errorf("storage: disk %q listed twice", d.Name)
		}
		seen[d.Name] = true
		if d.BlockSize < MinBlockSize || d.BlockSize > MaxBlockSize || d.BlockSize%MinBlockSize != 0 {
			return fmt.Errorf("storage: disk %q block size %d must be a multiple of %d in [%d, %d]",
				d.Name, d.BlockSize, MinBlockSize, MinBlockSize, MaxBlockSize)
		}
		if d.Size < 0 {
			return fmt.Errorf("storage: disk %q size %d", d.Name, d.Size)
		}
	}
	return nil
}

// BeginPoint starts a point of machine with these disks. If the machine
// already has a pending point (a cycle interrupted by a restart), that point
// is returned, with any new disks added and sizes updated: the new cycle's
// writes replace its rows for the same blocks.
func (r *Repo) BeginPoint(ctx context.Context, machine string, disks []DiskSpec) (*Pending, error) {
	c := r.c
	if err := c.check(); err != nil {
		return nil, err
	}
	if err := validName("machine", machine); err != nil {
		return nil, err
	}
	if err := validDisks(disks); err != nil {
		return nil, err
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	var id int64
	err = tx.QueryRowContext(ctx, `SELECT id FROM points WHERE machine=? AND state='pending'`, machine).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		res, err := tx.ExecContext(ctx, `INSERT INTO points(machine, state) VALUES (?, 'pending')`, machine)
		if err != nil {
			return nil, err
		}
		id, _ = res.LastInsertId()
	} else if err != nil {
		return nil, err
	}
	for _, d := range disks {
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO disks(machine, name, block_size) VALUES (?, ?, ?)`,
			machine, d.Name, d.BlockSize); err != nil {
			return nil, err
		}
		var did int64
		var bs int
		if err := tx.QueryRowContext(ctx, `SELECT id, block_size FROM disks WHERE machine=? AND name=?`, machine, d.Name).Scan(&did, &bs); err != nil {
			return nil, err
		}
		if bs != d.BlockSize {
			return nil, fmt.Errorf("storage: disk %s/%s has block size %d in the repository, not %d", machine, d.Name, bs, d.BlockSize)
		}
		if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO point_disks(point_id, disk_id, size) VALUES (?, ?, ?)`, id, did, d.Size); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	p, err := r.loadPending(ctx, id)
	if err != nil {
		return nil, err
	}
	p.only = map[string]bool{}
	for _, d := range disks {
		p.only[d.Name] = true
	}
	return p, nil
}

// PendingPoint returns the machine's pending point, or ErrNotFound.
func (r *Repo) PendingPoint(ctx context.Context, machine string) (*Pending, error) {
	if err := r.c.check(); err != nil {
		return nil, err
	}
	var id int64
	err := r.c.db.QueryRowContext(ctx, `SELECT id FROM points WHERE machine=? AND state='pending'`, machine).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: no pending point for machine %q", ErrNotFound, machine)
	}
	if err != nil {
		return nil, err
	}
	return r.loadPending(ctx, id)
}

func (r *Repo) loadPending(ctx context.Context, id int64) (*Pending, error) {
	p := &Pending{r: r, ID: id, diskIDs: map[string]int64{}, specs: map[string]DiskSpec{}}
	if err := r.c.db.QueryRowContext(ctx, `SELECT machine FROM points WHERE id=?`, id).Scan(&p.Machine); err != nil {
		return nil, err
	}
	ds, ids, err := r.c.pointDisks(ctx, id)
	if err != nil {
		return nil, err
	}
	p.Disks = ds
	for i, d := range ds {
		p.diskIDs[d.Name] = ids[i]
		p.specs[d.Name] = d
	}
	return p, nil
}

// pointDisks returns a point's disks (by name) and their disk ids.
func (c *core) pointDisks(ctx context.Context, id int64) ([]DiskSpec, []int64, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT d.name, pd.size, d.block_size, d.id FROM point_disks pd
		JOIN disks d ON d.id = pd.disk_id WHERE pd.point_id=? ORDER BY d.name`, id)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var ds []DiskSpec
	var ids []int64
	for rows.Next() {
		var d DiskSpec
		var did int64
		if err := rows.Scan(&d.Name, &d.Size, &d.BlockSize, &did); err != nil {
			return nil, nil, err
		}
		ds = append(ds, d)
		ids = append(ids, did)
	}
	return ds, ids, rows.Err()
}

// WithRepo returns the pending point bound to another view of the same
// repository (for a Patch in an encrypted repository with a key at hand).
func (p *Pending) WithRepo(r *Repo) *Pending {
	q := *p
	q.r = r
	return &q
}
