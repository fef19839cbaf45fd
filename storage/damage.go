package storage

import (
	"context"
	"time"
)

// MarkDamaged records chunks found damaged (by Verify, or a read that
// failed its check) in the index: lookups then treat them as not stored,
// so the next writer that has the content stores it again — the new copy
// takes the chunk's id, which makes every point that reads it whole again
// — and Points flags the committed points that read one as Damaged.
// Hashes that are not stored are ignored. It returns how many chunks were
// newly marked.
func (r *Repo) MarkDamaged(ctx context.Context, hashes []Hash, reason string) (int, error) {
	c := r.c
	if err := c.check(); err != nil {
		return 0, err
	}
	if len(hashes) == 0 {
		return 0, nil
	}
	// Folded first: a chunk of the recent level is never damaged (recent.go).
	unlock, err := c.lockSettled(ctx)
	if err != nil {
		return 0, err
	}
	defer unlock()
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx, `INSERT OR IGNORE INTO damaged_chunks(chunk_id, found_ns, reason)
		SELECT id, ?, ? FROM chunks WHERE hash=?`)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	n := int64(0)
	now := time.Now().UnixNano()
	for _, h := range hashes {
		res, err := st.ExecContext(ctx, now, reason, h[:])
		if err != nil {
			return 0, err
		}
		k, _ := res.RowsAffected()
		n += k
	}
	return int(n), tx.Commit()
}

// MarkMissing records chunk ids that rows name but the index does not
// hold (Verify's Damage.ChunkID) as damaged: Points then flags the
// committed points that read one as Damaged, like a damaged chunk's. No
// content can heal such a mark (its hash is unknown): it goes when the
// rows naming it do (retention, DeleteMachine) or with Rebuild. Ids that
// are stored chunks are ignored (MarkDamaged is for those). It returns how
// many ids were newly marked.
func (r *Repo) MarkMissing(ctx context.Context, ids []int64, reason string) (int, error) {
	c := r.c
	if err := c.check(); err != nil {
		return 0, err
	}
	if len(ids) == 0 {
		return 0, nil
	}
	// Folded first: a chunk of the recent level is never damaged (recent.go).
	unlock, err := c.lockSettled(ctx)
	if err != nil {
		return 0, err
	}
	defer unlock()
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	n := int64(0)
	now := time.Now().UnixNano()
	for _, id := range ids {
		res, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO damaged_chunks(chunk_id, found_ns, reason)
			SELECT ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM chunks WHERE id=?)`, id, now, reason, id)
		if err != nil {
			return 0, err
		}
		k, _ := res.RowsAffected()
		n += k
	}
	return int(n), tx.Commit()
}

// DamagedHashes lists the hashes of the chunks marked damaged.
func (r *Repo) DamagedHashes(ctx context.Context) (map[Hash]bool, error) {
	if err := r.c.check(); err != nil {
		return nil, err
	}
	hs, err := column[[]byte](r.c.db.QueryContext(ctx, `SELECT c.hash FROM damaged_chunks d JOIN chunks c ON c.id = d.chunk_id`))
	if err != nil {
		return nil, err
	}
	out := make(map[Hash]bool, len(hs))
	for _, b := range hs {
		var h Hash
		copy(h[:], b)
		out[h] = true
	}
	return out, nil
}

// damagedPoints returns the committed points of machine that read a chunk
// marked damaged (nil when none is: the common case costs one query).
func (c *core) damagedPoints(ctx context.Context, machine string) (map[int64]bool, error) {
	q := `SELECT DISTINCT d.chunk_id FROM damaged_chunks d
		JOIN changes ch ON ch.chunk_id = d.chunk_id JOIN disks k ON k.id = ch.disk_id WHERE k.machine = ?`
	ids, err := column[int64](c.db.QueryContext(ctx, q, machine))
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	// Which points read them depends on the blocks' later rows, which may
	// be in the recent level: fold it (rare: only with damage).
	if err := c.settle(ctx); err != nil {
		return nil, err
	}
	if ids, err = column[int64](c.db.QueryContext(ctx, q, machine)); err != nil {
		return nil, err
	}
	out := map[int64]bool{}
	for _, id := range ids {
		pds, err := c.affected(ctx, id)
		if err != nil {
			return nil, err
		}
		for _, pd := range pds {
			if pd.Machine == machine {
				out[pd.PointID] = true
			}
		}
	}
	return out, nil
}
