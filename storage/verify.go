package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/ferrydr/ferry/storage/internal/pack"
)

// VerifyOptions select what Verify checks.
type VerifyOptions struct {
	Machine  string // only chunks this machine's disks reference; "" = all
	ReadData bool   // also decrypt (with a key), decompress and re-hash
	// Plan, when set, learns how many chunks the pass will read, before
	// it reads any (a scrub's progress).
	Plan func(chunks int)
	// Pace, when set, is called before each chunk is read with its stored
	// length; it may sleep to hold a read rate (the point audit) and its
	// error (the context's) ends the pass.
	Pace func(ctx context.Context, bytes int64) error
}

// PointDisk names the blocks of one disk of one point that a damaged chunk
// makes unreadable.
type PointDisk struct {
	PointID int64
	Machine string
	Disk    string
	Blocks  []int64
}

// Damage is one damaged chunk, record or pack and what it affects.
type Damage struct {
	// ChunkID is set for a chunk that rows name but the index does not
	// hold (an incomplete index: no hash to name it by); MarkMissing
	// marks it.
	ChunkID  int64
	Hash     Hash
	Pack     string
	Offset   int64
	Err      error
	Affected []PointDisk
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	Chunks    int64
	Bytes     int64
	Plaintext bool // plaintext was re-hashed (ReadData, and a key if encrypted)
	Damaged   []Damage
}

// Verify re-reads every referenced chunk and checks its record (CRC, index
// row); with ReadData and a key (or unencrypted) it also decrypts,
// decompresses and re-hashes. It checks sealed packs' footers and point
// records, and names every point and disk a damaged chunk affects. It only
// reads, so interrupting it is harmless.
func (r *Repo) Verify(ctx context.Context, opts VerifyOptions) (VerifyReport, error) {
	c := r.c
	var rep VerifyReport
	if err := c.check(); err != nil {
		return rep, err
	}
	if err := c.settle(ctx); err != nil {
		return rep, err
	}
	rep.Plaintext = opts.ReadData && (c.pub == nil || r.priv != nil)
	if opts.Machine == "" {
		if err := c.verifyPacks(ctx, &rep); err != nil {
			return rep, err
		}
	}
	ids, err := c.chunksToVerify(ctx, opts.Machine)
	if err != nil {
		return rep, err
	}
	if opts.Plan != nil {
		opts.Plan(len(ids))
	}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if opts.Pace != nil {
			// Paced by the chunk's length before it is looked up again
			// under gcMu (the pacer's sleep must not hold GC up).
			var length int64
			if c.db.QueryRowContext(ctx, `SELECT length FROM chunks WHERE id=?`, id).Scan(&length) == nil {
				if err := opts.Pace(ctx, length); err != nil {
					return rep, err
				}
			}
		}
		row, gone, err := c.verifyChunk(ctx, r, id, rep.Plaintext)
		if gone {
			continue
		}
		if errors.Is(err, ErrChunkMissing) {
			d := Damage{ChunkID: id, Err: err}
			if d.Affected, err = c.affected(ctx, id); err != nil {
				return rep, err
			}
			rep.Damaged = append(rep.Damaged, d)
			continue
		}
		if row.id == 0 && err != nil {
			return rep, err
		}
		rep.Chunks++
		rep.Bytes += row.length
		if err == nil {
			continue
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return rep, err
		}
		d := Damage{Hash: row.hash, Pack: packName(row.pack), Offset: row.off, Err: err}
		if d.Affected, err = c.affected(ctx, id); err != nil {
			return rep, err
		}
		rep.Damaged = append(rep.Damaged, d)
	}
	return rep, nil
}

// verifyChunk looks a chunk up and reads it (the record, or the plaintext)
// holding gcMu, so a GC running meanwhile cannot delete or repack it
// between the two: a long, paced Verify never takes a chunk GC moved or
// dropped for damage. gone: the chunk was deleted and no row names it any
// more (GC ran since the ids were listed), which is not damage. A lookup
// error other than ErrChunkMissing comes back with a zero row.
func (c *core) verifyChunk(ctx context.Context, r *Repo, id int64, plaintext bool) (row chunkRow, gone bool, err error) {
	c.gcMu.Lock()
	defer c.gcMu.Unlock()
	row, err = c.chunkByID(ctx, id)
	if errors.Is(err, ErrChunkMissing) {
		var named bool
		if qerr := c.db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM changes WHERE chunk_id=?)`, id).Scan(&named); qerr != nil {
			return chunkRow{}, false, qerr
		}
		return row, !named, err
	}
	if err != nil {
		return chunkRow{}, false, err
	}
	if plaintext {
		_, err = r.readChunkRow(ctx, row)
	} else {
		_, err = c.readChunkRecord(row)
	}
	return row, false, err
}

// chunksToVerify lists chunk ids: all stored chunks plus ids referenced by
// rows (a missing one is damage), or those of one machine.
func (c *core) chunksToVerify(ctx context.Context, machine string) ([]int64, error) {
	q := `SELECT id FROM chunks UNION SELECT DISTINCT chunk_id FROM changes WHERE chunk_id IS NOT NULL`
	var args []any
	if machine != "" {
		q = `SELECT DISTINCT chunk_id FROM changes WHERE chunk_id IS NOT NULL AND disk_id IN (SELECT id FROM disks WHERE machine=?)`
		args = append(args, machine)
	}
	ids, err := column[int64](c.db.QueryContext(ctx, q, args...))
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids, err
}

// affected names every retained point (and disk, and block) that reads a
// chunk: a row (b, s) is read by the committed points in [s, next row of b).
func (c *core) affected(ctx context.Context, chunkID int64) ([]PointDisk, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT c.disk_id, c.block, c.seq, d.machine, d.name,
		(SELECT min(n.seq) FROM changes n WHERE n.disk_id=c.disk_id AND n.block=c.block AND n.seq>c.seq)
		FROM changes c JOIN disks d ON d.id=c.disk_id WHERE c.chunk_id=?`, chunkID)
	if err != nil {
		return nil, err
	}
	type hit struct {
		disk, block, seq int64
		machine, name    string
		next             sql.NullInt64
	}
	var hits []hit
	for rows.Next() {
		var h hit
		if err := rows.Scan(&h.disk, &h.block, &h.seq, &h.machine, &h.name, &h.next); err != nil {
			rows.Close()
			return nil, err
		}
		hits = append(hits, h)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	byKey := map[[2]int64]*PointDisk{}
	var out []*PointDisk
	for _, h := range hits {
		hi := int64(headSeq)
		if h.next.Valid {
			hi = h.next.Int64
		}
		prow, err := c.db.QueryContext(ctx, `SELECT id FROM points WHERE machine=? AND state='committed' AND id>=? AND id<? ORDER BY id`,
			h.machine, h.seq, hi)
		if err != nil {
			return nil, err
		}
		var pids []int64
		for prow.Next() {
			var id int64
			if err := prow.Scan(&id); err != nil {
				prow.Close()
				return nil, err
			}
			pids = append(pids, id)
		}
		prow.Close()
		for _, pid := range pids {
			k := [2]int64{pid, h.disk}
			pd := byKey[k]
			if pd == nil {
				pd = &PointDisk{PointID: pid, Machine: h.machine, Disk: h.name}
				byKey[k] = pd
				out = append(out, pd)
			}
			pd.Blocks = append(pd.Blocks, h.block)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].PointID != out[j].PointID {
			return out[i].PointID < out[j].PointID
		}
		return out[i].Disk < out[j].Disk
	})
	res := make([]PointDisk, len(out))
	for i, pd := range out {
		sort.Slice(pd.Blocks, func(a, b int) bool { return pd.Blocks[a] < pd.Blocks[b] })
		res[i] = *pd
	}
	return res, nil
}

// verifyPacks checks each pack file: present, header, at least its indexed
// size, a valid footer when sealed, and every point record's CRC.
func (c *core) verifyPacks(ctx context.Context, rep *VerifyReport) error {
	ps, err := column[int64](c.db.QueryContext(ctx, `SELECT id FROM packs ORDER BY id`))
	if err != nil {
		return err
	}
	// Every committed point must have its commit record in a pack, or
	// Rebuild could not restore it.
	orphans, err := c.db.QueryContext(ctx, `SELECT id, machine FROM points p WHERE state='committed'
		AND NOT EXISTS (SELECT 1 FROM records r WHERE r.point_id=p.id AND r.type=?)`, pack.TypePointCommit)
	if err != nil {
		return err
	}
	for orphans.Next() {
		var id int64
		var m string
		if err := orphans.Scan(&id, &m); err != nil {
			orphans.Close()
			return err
		}
		rep.Damaged = append(rep.Damaged, Damage{Err: fmt.Errorf("%w: point %d has no commit record in any pack", ErrCorrupt, id),
			Affected: []PointDisk{{PointID: id, Machine: m}}})
	}
	orphans.Close()
	for _, p := range ps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := c.verifyPack(ctx, uint64(p), rep); err != nil {
			return err
		}
	}
	return nil
}

// verifyPack checks one pack and its point records holding gcMu, its index
// row read again under it: a pack GC deleted or repacked since the list
// was made is skipped, never reported missing.
func (c *core) verifyPack(ctx context.Context, id uint64, rep *VerifyReport) error {
	c.gcMu.Lock()
	defer c.gcMu.Unlock()
	var state string
	var size int64
	err := c.db.QueryRowContext(ctx, `SELECT state, size FROM packs WHERE id=?`, int64(id)).Scan(&state, &size)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := c.verifyPackFile(id, state, size); err != nil {
		rep.Damaged = append(rep.Damaged, Damage{Pack: packName(id), Err: err})
	}
	recs, err := c.db.QueryContext(ctx, `SELECT offset, length, point_id FROM records WHERE pack_id=?`, int64(id))
	if err != nil {
		return err
	}
	type rr struct{ off, length, point int64 }
	var rl []rr
	for recs.Next() {
		var x rr
		if err := recs.Scan(&x.off, &x.length, &x.point); err != nil {
			recs.Close()
			return err
		}
		rl = append(rl, x)
	}
	recs.Close()
	for _, x := range rl {
		if _, err := c.readRecord(id, x.off, x.length); err != nil {
			d := Damage{Pack: packName(id), Offset: x.off, Err: fmt.Errorf("record of point %d: %w", x.point, err)}
			var m string
			if c.db.QueryRowContext(ctx, `SELECT machine FROM points WHERE id=? AND state='committed'`, x.point).Scan(&m) == nil {
				d.Affected = []PointDisk{{PointID: x.point, Machine: m}}
			}
			rep.Damaged = append(rep.Damaged, d)
		}
	}
	return nil
}

func (c *core) verifyPackFile(id uint64, state string, size int64) error {
	path := packPath(c.dir, id)
	f, err := os.Open(path)
	if err != nil {
		return &CorruptError{Pack: packName(id), Reason: "pack file missing", Err: err}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return opErr("stat", path, err)
	}
	if st.Size() < size {
		return &CorruptError{Pack: packName(id), Offset: st.Size(), Reason: fmt.Sprintf("pack is %d bytes, index names %d", st.Size(), size)}
	}
	hdr := make([]byte, pack.HeaderSize)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return &CorruptError{Pack: packName(id), Reason: "header unreadable", Err: err}
	}
	h, err := pack.ParseHeader(hdr)
	if err != nil || h.PackID != id || h.RepoID != c.repoID || h.Version != pack.Version {
		return &CorruptError{Pack: packName(id), Reason: "header does not match", Err: err}
	}
	if state == "sealed" {
		if _, _, err := pack.ReadFooter(f, size); err != nil {
			return &CorruptError{Pack: packName(id), Offset: size, Reason: "sealed pack has no valid footer", Err: err}
		}
	}
	return nil
}
