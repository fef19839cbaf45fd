package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/ferrydr/ferry/storage/internal/pack"
)

// RebuildReport says what Rebuild found in the packs.
type RebuildReport struct {
	Packs         int
	Chunks        int
	Points        int     // committed points restored
	Deleted       int     // points restored as deleted (tombstoned)
	Incomplete    []int64 // points whose change records are not all present
	MissingChunks int     // rows naming a chunk no pack holds (reads fail)
	TornPacks     []string
	Damaged       []string // packs whose header is unreadable or foreign
}

type rbCopy struct {
	commit pack.Commit
	parts  map[uint32]pack.Entry // where each part is; decoded again in pass 2
	pack   uint64
	recs   []pack.Entry
	flags  []uint8
}

// Rebuild recreates the index of the repository in dir from its packs: it
// removes any index files, then replays every chunk, key and point record
// (commits in id order, tombstones, labels by serial) and runs the same
// sweep as GC. Pending (uncommitted) data is not in the packs and is lost:
// the controller must resync every machine's block map afterwards.
func Rebuild(ctx context.Context, dir string, opts OpenOptions) (RebuildReport, error) {
	var rep RebuildReport
	cfg, err := readConfig(dir)
	if err != nil {
		return rep, err
	}
	repoID, _ := cfg.repoID()
	lock, err := lockRepo(dir, false)
	if err != nil {
		return rep, err
	}
	defer lock.Close()
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		if err := os.Remove(filepath.Join(dir, indexName+suffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return rep, opErr("remove index", dir, err)
		}
	}
	db, err := openIndex(ctx, filepath.Join(dir, indexName), opts.ExclusiveLock)
	if err != nil {
		return rep, err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `INSERT INTO meta(key, value) VALUES ('repo_id', ?), ('format_version', ?)`,
		cfg.RepoID, fmt.Sprint(FormatVersionCurrent)); err != nil {
		return rep, err
	}
	copies := map[uint64][]*rbCopy{} // point id -> copies (one per pack)
	deletes := map[uint64]bool{}
	type mdel struct {
		machine string
		bound   uint64
	}
	var mdels []mdel
	labels := map[uint64]pack.Label{}
	maxID := uint64(0)
	patchBases := map[Hash]Hash{} // patch records' hashes -> their bases'

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return rep, err
	}
	defer tx.Rollback()
	subs, _ := os.ReadDir(filepath.Join(dir, packsDir))
	for _, s := range subs {
		files, _ := os.ReadDir(filepath.Join(dir, packsDir, s.Name()))
		for _, fe := range files {
			id, ok := parsePackFileName(fe.Name())
			if !ok {
				continue
			}
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			path := filepath.Join(dir, packsDir, s.Name(), fe.Name())
			f, err := os.Open(path)
			if err != nil {
				return rep, opErr("open pack", path, err)
			}
			st, _ := f.Stat()
			hdr := make([]byte, pack.HeaderSize)
			_, rerr := f.ReadAt(hdr, 0)
			h, herr := pack.ParseHeader(hdr)
			if rerr != nil || herr != nil || h.PackID != id || h.RepoID != repoID {
				f.Close()
				rep.Damaged = append(rep.Damaged, packName(id))
				continue
			}
			if h.Version > pack.Version {
				f.Close()
				return rep, &FormatVersionError{Subject: "pack", Path: path, Found: int(h.Version), Min: 1, Max: pack.Version}
			}
			state := "sealed"
			size := st.Size()
			if _, _, ferr := pack.ReadFooter(f, st.Size()); ferr != nil {
				state = "open"
				rep.TornPacks = append(rep.TornPacks, packName(id))
			}
			rep.Packs++
			copiesHere := map[uint64]*rbCopy{}
			getCopy := func(pid uint64) *rbCopy {
				cp := copiesHere[pid]
				if cp == nil {
					cp = &rbCopy{parts: map[uint32]pack.Entry{}, pack: id}
					copiesHere[pid] = cp
				}
				return cp
			}
			end, err := pack.Scan(f, st.Size(), func(off int64, rec pack.Record, n int) error {
				e := pack.Entry{Type: rec.Type, Offset: off, Length: int64(n)}
				switch rec.Type {
				case pack.TypeChunk:
					ch, err := pack.DecodeChunk(rec.Payload)
					if err != nil {
						return nil
					}
					// A whole chunk takes the place of a patch record of
					// its hash (as at ingest); patch records get their
					// base once every pack is read (resolvePatchBases).
					var base any
					if ch.Flags&pack.ChunkPatch != 0 {
						base = -1
						patchBases[Hash(ch.Hash)] = Hash(ch.Base)
					}
					if _, err := tx.ExecContext(ctx, `INSERT INTO chunks(hash, pack_id, offset, length, plain_len, codec, key_slot, base_id)
						VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(hash) DO UPDATE SET pack_id=excluded.pack_id, offset=excluded.offset,
						length=excluded.length, plain_len=excluded.plain_len, codec=excluded.codec, key_slot=excluded.key_slot, base_id=NULL
						WHERE chunks.base_id IS NOT NULL AND excluded.base_id IS NULL`, ch.Hash[:], int64(id), off, n, ch.PlainLen, ch.Codec, ch.KeySlot, base); err != nil {
						return err
					}
				case pack.TypeKey:
					k, err := pack.DecodeKey(rec.Payload)
					if err != nil {
						return nil
					}
					if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO keys(slot, sealed) VALUES (?, ?)`, k.Slot, pack.EncodeKey(k)); err != nil {
						return err
					}
				case pack.TypePointChanges:
					c, err := pack.DecodeChanges(rec.Payload)
					if err != nil {
						return nil
					}
					cp := getCopy(c.PointID)
					cp.parts[c.Part] = e
					cp.recs = append(cp.recs, e)
					cp.flags = append(cp.flags, rec.Flags)
					maxID = max(maxID, c.PointID)
				case pack.TypePointCommit:
					c, err := pack.DecodeCommit(rec.Payload)
					if err != nil {
						return nil
					}
					cp := getCopy(c.PointID)
					cp.commit = c
					cp.recs = append(cp.recs, e)
					cp.flags = append(cp.flags, rec.Flags)
					maxID = max(maxID, c.PointID)
				case pack.TypePointDelete:
					d, err := pack.DecodeDelete(rec.Payload)
					if err != nil {
						return nil
					}
					if rec.Flags&pack.DeleteMachineFlag != 0 {
						mdels = append(mdels, mdel{d.Machine, d.PointID})
					} else {
						deletes[d.PointID] = true
					}
					maxID = max(maxID, d.PointID)
					if _, err := tx.ExecContext(ctx, `INSERT INTO records(pack_id, offset, length, type, flags, point_id) VALUES (?, ?, ?, ?, ?, ?)`,
						int64(id), off, n, rec.Type, rec.Flags, int64(d.PointID)); err != nil {
						return err
					}
				case pack.TypePointLabel:
					l, err := pack.DecodeLabel(rec.Payload)
					if err != nil {
						return nil
					}
					if old, ok := labels[l.PointID]; !ok || l.Serial > old.Serial {
						labels[l.PointID] = l
					}
					if _, err := tx.ExecContext(ctx, `INSERT INTO records(pack_id, offset, length, type, flags, point_id) VALUES (?, ?, ?, ?, ?, ?)`,
						int64(id), off, n, rec.Type, rec.Flags, int64(l.PointID)); err != nil {
						return err
					}
				}
				return nil
			})
			f.Close()
			if err != nil {
				return rep, err
			}
			if state == "open" {
				size = end
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO packs(id, state, size, created_ns) VALUES (?, ?, ?, ?)`,
				int64(id), state, size, st.ModTime().UnixNano()); err != nil {
				return rep, err
			}
			for pid, cp := range copiesHere {
				copies[pid] = append(copies[pid], cp)
			}
		}
	}
	if err := resolvePatchBases(ctx, tx, patchBases, time.Now().UnixNano()); err != nil {
		return rep, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE packs SET state='sealed' WHERE state='open' AND id NOT IN
		(SELECT id FROM packs WHERE state='open' ORDER BY created_ns DESC LIMIT 1)`); err != nil {
		return rep, err
	}
	// Points in id order: a complete copy gives the metadata; rows are the
	// union of complete copies (copies of a committed point are identical).
	ids := make([]uint64, 0, len(copies))
	for pid := range copies {
		ids = append(ids, pid)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	diskIDs := map[[2]string]int64{}
	chunkSt, err := tx.PrepareContext(ctx, `SELECT id FROM chunks WHERE hash=?`)
	if err != nil {
		return rep, err
	}
	defer chunkSt.Close()
	rowSt, err := tx.PrepareContext(ctx, `INSERT OR IGNORE INTO changes(disk_id, block, seq, chunk_id) VALUES (?, ?, ?, ?)`)
	if err != nil {
		return rep, err
	}
	defer rowSt.Close()
	for _, pid := range ids {
		var complete []*rbCopy
		for _, cp := range copies[pid] {
			if cp.commit.PointID == pid && uint32(len(cp.parts)) == cp.commit.Parts {
				complete = append(complete, cp)
			}
		}
		if len(complete) == 0 {
			rep.Incomplete = append(rep.Incomplete, int64(pid))
			continue
		}
		cm := complete[0].commit
		state := "committed"
		if deletes[pid] {
			state = "deleted"
			rep.Deleted++
		} else {
			rep.Points++
		}
		name, serial := cm.Name, cm.LabelSerial
		if l, ok := labels[pid]; ok && l.Serial > serial {
			name, serial = l.Name, l.Serial
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO points(id, machine, state, instant_ns, consistency, name, label_serial, bytes, changed, committed_ns)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, int64(pid), cm.Machine, state, cm.InstantNs, cm.Consistency, name, serial,
			cm.Bytes, cm.Changed, cm.CommittedNs); err != nil {
			return rep, err
		}
		for _, d := range cm.Disks {
			k := [2]string{cm.Machine, d.Name}
			did, ok := diskIDs[k]
			if !ok {
				res, err := tx.ExecContext(ctx, `INSERT INTO disks(machine, name, block_size) VALUES (?, ?, ?)`, cm.Machine, d.Name, d.BlockSize)
				if err != nil {
					return rep, err
				}
				did, _ = res.LastInsertId()
				diskIDs[k] = did
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO point_disks(point_id, disk_id, size) VALUES (?, ?, ?)`, int64(pid), did, d.Size); err != nil {
				return rep, err
			}
		}
		for _, cp := range complete {
			for i, e := range cp.recs {
				if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO records(pack_id, offset, length, type, flags, point_id) VALUES (?, ?, ?, ?, ?, ?)`,
					int64(cp.pack), e.Offset, e.Length, e.Type, cp.flags[i], int64(pid)); err != nil {
					return rep, err
				}
			}
			for _, e := range cp.parts {
				part, err := readPart(dir, cp.pack, e)
				if err != nil {
					return rep, err
				}
				for _, dc := range part.Disks {
					did, ok := diskIDs[[2]string{cm.Machine, dc.Disk}]
					if !ok {
						continue
					}
					for _, ch := range dc.Changes {
						var cid any
						if !ch.Zero {
							var id int64
							err := chunkSt.QueryRowContext(ctx, ch.Hash[:]).Scan(&id)
							if errors.Is(err, sql.ErrNoRows) {
								id = -1 // no pack holds it: reads fail, never return zeros
							} else if err != nil {
								return rep, err
							}
							cid = id
						}
						if _, err := rowSt.ExecContext(ctx, did, ch.Block, int64(pid), cid); err != nil {
							return rep, err
						}
					}
				}
			}
		}
	}
	// Machine tombstones: every point up to the bound goes, head rows too.
	for _, md := range mdels {
		if _, err := tx.ExecContext(ctx, `UPDATE points SET state='deleted' WHERE machine=? AND id<=?`, md.machine, int64(md.bound)); err != nil {
			return rep, err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM changes WHERE seq<=? AND disk_id IN (SELECT id FROM disks WHERE machine=?)`,
			int64(md.bound), md.machine); err != nil {
			return rep, err
		}
	}
	// New points must get ids above every id the packs mention.
	res, err := tx.ExecContext(ctx, `UPDATE sqlite_sequence SET seq=max(seq, ?) WHERE name='points'`, int64(maxID))
	if err != nil {
		return rep, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		if _, err := tx.ExecContext(ctx, `INSERT INTO sqlite_sequence(name, seq) VALUES ('points', ?)`, int64(maxID)); err != nil {
			return rep, err
		}
	}
	if err := tx.Commit(); err != nil {
		return rep, err
	}
	if _, err := sweepAll(ctx, db, func() (func(), error) { return func() {}, nil }); err != nil {
		return rep, err
	}
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM changes WHERE chunk_id=-1`).Scan(&rep.MissingChunks); err != nil {
		return rep, err
	}
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM chunks`).Scan(&rep.Chunks); err != nil {
		return rep, err
	}
	return rep, nil
}

// readPart reads one point-changes record again (pass 2 of Rebuild keeps
// only record locations in memory, not the changes themselves).
func readPart(dir string, packID uint64, e pack.Entry) (pack.Changes, error) {
	f, err := os.Open(packPath(dir, packID))
	if err != nil {
		return pack.Changes{}, opErr("open pack", packPath(dir, packID), err)
	}
	defer f.Close()
	buf := make([]byte, e.Length)
	if _, err := f.ReadAt(buf, e.Offset); err != nil {
		return pack.Changes{}, opErr("read pack", packPath(dir, packID), err)
	}
	rec, _, err := pack.ParseRecord(buf)
	if err != nil {
		return pack.Changes{}, &CorruptError{Pack: packName(packID), Offset: e.Offset, Reason: "point-changes record changed during rebuild", Err: err}
	}
	return pack.DecodeChanges(rec.Payload)
}

// resolvePatchBases gives the patch records a rebuild indexed their bases
// and depths, found by hash. A patch whose base is in no pack cannot be
// read: it is marked damaged (its points say so) and left over a zero base.
func resolvePatchBases(ctx context.Context, tx *sql.Tx, bases map[Hash]Hash, now int64) error {
	depth := func(h Hash) int {
		d := 0
		for seen := 0; seen <= len(bases); seen++ {
			b, ok := bases[h]
			if !ok {
				return d
			}
			var stillPatch bool
			if err := tx.QueryRowContext(ctx, `SELECT base_id IS NOT NULL FROM chunks WHERE hash=?`, h[:]).Scan(&stillPatch); err != nil || !stillPatch {
				return d
			}
			d, h = d+1, b
		}
		return d
	}
	for h, b := range bases {
		var base int64
		if b != (Hash{}) {
			err := tx.QueryRowContext(ctx, `SELECT id FROM chunks WHERE hash=?`, b[:]).Scan(&base)
			if errors.Is(err, sql.ErrNoRows) {
				if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO damaged_chunks(chunk_id, found_ns, reason)
					SELECT id, ?, 'rebuild: the base of this patch is in no pack' FROM chunks WHERE hash=? AND base_id=-1`, now, h[:]); err != nil {
					return err
				}
				base = 0
			} else if err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE chunks SET base_id=?, depth=? WHERE hash=? AND base_id=-1`, base, max(depth(h), 1), h[:]); err != nil {
			return err
		}
	}
	return nil
}
