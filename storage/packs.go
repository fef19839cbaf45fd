package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/ferrydr/ferry/storage/internal/pack"
)

// openPack is the pack being appended. Only size bytes are indexed; bytes
// past it belong to a batch whose index commit has not happened yet.
type openPack struct {
	id      uint64
	f       *os.File
	size    int64
	entries []pack.Entry
	slots   map[uint32]bool // key records present in the indexed part
	key     *dataKey        // data key for new chunks (encrypted repos)
}

func packName(id uint64) string { return fmt.Sprintf("%016x", id) }

func packPath(dir string, id uint64) string {
	n := packName(id)
	return filepath.Join(dir, packsDir, n[:2], n+".pack")
}

// createPack makes a new pack file with its header. The header becomes
// durable with the first batch's fdatasync; the directory entries are made
// durable here, before any index row can name the pack.
func (c *core) createPack(ctx context.Context) (*openPack, error) {
	var id uint64
	for {
		var b [8]byte
		randRead(b[:])
		id = uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
			uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
		var n int
		if err := c.db.QueryRowContext(ctx, `SELECT count(*) FROM packs WHERE id=?`, int64(id)).Scan(&n); err != nil {
			return nil, err
		}
		if _, err := os.Stat(packPath(c.dir, id)); n == 0 && id != 0 && errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	path := packPath(c.dir, id)
	sub := filepath.Dir(path)
	if _, err := os.Stat(sub); errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(sub, 0o700); err != nil {
			return nil, opErr("mkdir", sub, err)
		}
		if err := c.sync.dirSync(syncPackMkdir, filepath.Dir(sub)); err != nil {
			return nil, err
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, opErr("create pack", path, err)
	}
	hdr := pack.AppendHeader(nil, pack.Header{Version: pack.Version, PackID: id, RepoID: c.repoID})
	if _, err := f.WriteAt(hdr, 0); err != nil {
		f.Close()
		return nil, opErr("write pack header", path, err)
	}
	if err := c.sync.dirSync(syncPackCreate, sub); err != nil {
		f.Close()
		return nil, err
	}
	return &openPack{id: id, f: f, size: pack.HeaderSize, slots: map[uint32]bool{}}, nil
}

// batch collects records to append to the open pack in one write and one
// fdatasync.
type batch struct {
	op       *openPack
	base     int64 // pack offset where this batch starts
	buf      []byte
	entries  []pack.Entry
	points   []int64 // point id per entry (0 for chunks and keys)
	flags    []uint8
	newKeys  []pack.SealedKey
	newPack  bool
	inBatchK map[uint32]bool
}

func (b *batch) end() int64 { return b.base + int64(len(b.buf)) }

// next starts a batch that continues this one in the same pack before
// either is indexed (a large commit is written as several flushes).
func (b *batch) next() *batch {
	return &batch{op: b.op, base: b.end(), inBatchK: b.inBatchK}
}

// add appends one record and returns its offset and length in the pack.
func (b *batch) add(typ, flags uint8, payload []byte, h Hash, pointID int64) (int64, int64) {
	b.flags = append(b.flags, flags)
	off := b.end()
	b.buf = pack.AppendRecord(b.buf, typ, flags, payload)
	n := int64(pack.RecordOverhead + len(payload))
	b.entries = append(b.entries, pack.Entry{Type: typ, Offset: off, Length: n, Hash: h})
	b.points = append(b.points, pointID)
	return off, n
}

// needKey makes sure the pack carries the key record of a slot before any
// chunk that uses it.
func (b *batch) needKey(sk pack.SealedKey) {
	if b.op.slots[sk.Slot] || b.inBatchK[sk.Slot] {
		return
	}
	if b.inBatchK == nil {
		b.inBatchK = map[uint32]bool{}
	}
	b.inBatchK[sk.Slot] = true
	b.newKeys = append(b.newKeys, sk)
	b.add(pack.TypeKey, 0, pack.EncodeKey(sk), Hash{}, 0)
}

// newBatch starts a batch on the open pack, creating one if needed. Call
// with writeMu held.
func (c *core) newBatch(ctx context.Context) (*batch, error) {
	b := &batch{}
	if c.open == nil {
		op, err := c.createPack(ctx)
		if err != nil {
			return nil, err
		}
		c.open = op
		b.newPack = true
	}
	b.op = c.open
	b.base = c.open.size
	return b, nil
}

// packKey returns the open pack's data key, making one if needed, and adds
// its key record to the batch.
func (c *core) packKey(b *batch) (*dataKey, error) {
	if b.op.key == nil {
		if c.nextKey == 0 {
			var max sql.NullInt64
			if err := c.db.QueryRow(`SELECT max(slot) FROM keys`).Scan(&max); err != nil {
				return nil, err
			}
			c.nextKey = uint32(max.Int64) + 1
		}
		k, err := sealDataKey(c.pub, c.repoID, c.nextKey)
		if err != nil {
			return nil, fmt.Errorf("storage: seal data key: %w", err)
		}
		c.nextKey++
		b.op.key = k
		c.keyMu.Lock()
		c.aeads[k.slot] = k.aead
		c.keyMu.Unlock()
	}
	b.needKey(b.op.key.sealed)
	return b.op.key, nil
}

// flush writes the batch, fdatasyncs it, and re-reads it to check every
// record's CRC before anything may be indexed.
func (c *core) flush(b *batch) error {
	if len(b.buf) == 0 {
		return nil
	}
	f := b.op.f
	if _, err := f.WriteAt(b.buf, b.base); err != nil {
		return opErr("append", f.Name(), err)
	}
	c.fail(FailPackAppended)
	if err := c.sync.dataSync(syncPackAppend, f); err != nil {
		return err
	}
	c.fail(FailPackSynced)
	back := groupBufs.get(len(b.buf))
	defer groupBufs.put(back) // the records parsed from it are checked here, not kept
	if _, err := f.ReadAt(back, b.base); err != nil {
		return opErr("re-read", f.Name(), err)
	}
	for i, e := range b.entries {
		rel := e.Offset - b.base
		rec, n, err := pack.ParseRecord(back[rel:])
		if err != nil || int64(n) != e.Length || rec.Type != e.Type {
			return &CorruptError{Pack: packName(b.op.id), Offset: e.Offset, Hash: e.Hash,
				Reason: fmt.Sprintf("record %d did not read back as written", i), Err: err}
		}
	}
	return nil
}

// indexBatch records the batch's pack growth and new keys in tx.
func (c *core) indexBatch(ctx context.Context, tx *sql.Tx, b *batch) error {
	if len(b.buf) == 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO packs(id, state, size, created_ns) VALUES (?, 'open', ?, ?)
		ON CONFLICT(id) DO UPDATE SET size=excluded.size`, int64(b.op.id), b.end(), c.clock().UnixNano()); err != nil {
		return err
	}
	for _, k := range b.newKeys {
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO keys(slot, sealed) VALUES (?, ?)`, k.Slot, pack.EncodeKey(k)); err != nil {
			return err
		}
	}
	for i, e := range b.entries {
		if b.points[i] != 0 {
			if _, err := tx.ExecContext(ctx, `INSERT INTO records(pack_id, offset, length, type, flags, point_id) VALUES (?, ?, ?, ?, ?, ?)`,
				int64(b.op.id), e.Offset, e.Length, e.Type, b.flags[i], b.points[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// finish advances the open pack after the index commit and seals it once
// it reached the target size.
func (c *core) finish(ctx context.Context, b *batch) {
	c.advance(b)
	c.maybeSeal(ctx)
}

// advance moves the open pack past an indexed batch.
func (c *core) advance(b *batch) {
	b.op.size = b.end()
	b.op.entries = append(b.op.entries, b.entries...)
	for _, k := range b.newKeys {
		b.op.slots[k.Slot] = true
	}
}

// maybeSeal seals the open pack once it reached the target size.
func (c *core) maybeSeal(ctx context.Context) {
	op := c.open
	if op != nil && op.size >= c.packSize {
		if err := c.seal(ctx); err != nil {
			c.log.Warn("sealing pack failed; it stays open", "pack", packName(op.id), "err", err)
		}
	}
}

// seal appends the footer, fdatasyncs it, then marks the pack sealed.
func (c *core) seal(ctx context.Context) error {
	op := c.open
	foot := pack.AppendFooter(nil, op.entries)
	if _, err := op.f.WriteAt(foot, op.size); err != nil {
		return opErr("append footer", op.f.Name(), err)
	}
	if err := c.sync.dataSync(syncPackSeal, op.f); err != nil {
		return err
	}
	c.fail(FailPackSealed)
	if _, err := c.db.ExecContext(ctx, `UPDATE packs SET state='sealed', size=? WHERE id=?`,
		op.size+int64(len(foot)), int64(op.id)); err != nil {
		return err
	}
	if err := trimPreallocation(op.f, op.size+int64(len(foot))); err != nil {
		c.log.Warn("trimming a sealed pack's preallocated blocks failed", "pack", packName(op.id), "err", err)
	}
	op.f.Close()
	c.open = nil
	return nil
}

// trimPreallocation cuts a pack file to size, which drops the blocks the
// filesystem allocated past its end: XFS keeps its speculative
// preallocation (up to the file's size again) when a file that was
// reopened for appends — the open pack after a controller restart — is
// closed, until a background scan minutes later, so the repository's
// allocated size overstated what it holds. Bytes past size are never
// indexed (Open cuts them too).
func trimPreallocation(f *os.File, size int64) error {
	if err := f.Truncate(size); err != nil {
		return opErr("trim", f.Name(), err)
	}
	return nil
}

// recoverPacks runs at Open: it cuts the open pack back to what the index
// names (bytes past it were never acknowledged), removes pack files the
// index does not know (created or repacked before a crash), and reloads the
// open pack's record list for its footer.
func (c *core) recoverPacks(ctx context.Context) error {
	type row struct {
		id    uint64
		state string
		size  int64
	}
	var rows []row
	rs, err := c.db.QueryContext(ctx, `SELECT id, state, size FROM packs`)
	if err != nil {
		return err
	}
	known := map[uint64]bool{}
	for rs.Next() {
		var r row
		var id int64
		if err := rs.Scan(&id, &r.state, &r.size); err != nil {
			rs.Close()
			return err
		}
		r.id = uint64(id)
		known[r.id] = true
		rows = append(rows, r)
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return err
	}
	if err := c.removeOrphanPacks(known); err != nil {
		return err
	}
	for _, r := range rows {
		if r.state != "open" {
			continue
		}
		path := packPath(c.dir, r.id)
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return opErr("open pack", path, err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return opErr("stat pack", path, err)
		}
		if st.Size() > r.size {
			c.log.Info("cutting unacknowledged pack tail", "pack", packName(r.id), "indexed", r.size, "file", st.Size())
			if err := f.Truncate(r.size); err != nil {
				f.Close()
				return opErr("truncate pack", path, err)
			}
			// Not synced on purpose: if the cut is lost in a crash, the
			// next Open cuts again, and the next append's fdatasync makes
			// the shorter size durable (docs/crash-semantics.md).
		}
		op := &openPack{id: r.id, f: f, size: r.size, slots: map[uint32]bool{}}
		end, err := pack.Scan(f, r.size, func(off int64, rec pack.Record, n int) error {
			e := pack.Entry{Type: rec.Type, Offset: off, Length: int64(n)}
			switch rec.Type {
			case pack.TypeChunk:
				ch, err := pack.DecodeChunk(rec.Payload)
				if err != nil {
					return err
				}
				e.Hash = ch.Hash
			case pack.TypeKey:
				k, err := pack.DecodeKey(rec.Payload)
				if err != nil {
					return err
				}
				op.slots[k.Slot] = true
			}
			op.entries = append(op.entries, e)
			return nil
		})
		if err != nil || end != r.size {
			f.Close()
			return &CorruptError{Pack: packName(r.id), Offset: end, Reason: "open pack does not scan to its indexed size", Err: err}
		}
		if c.open != nil {
			// Only one pack is ever open; seal the extra one now.
			if err := c.seal(ctx); err != nil {
				f.Close()
				return err
			}
		}
		c.open = op
	}
	return nil
}

func (c *core) removeOrphanPacks(known map[uint64]bool) error {
	subs, err := os.ReadDir(filepath.Join(c.dir, packsDir))
	if err != nil {
		return opErr("list packs", c.dir, err)
	}
	for _, s := range subs {
		if !s.IsDir() {
			continue
		}
		dir := filepath.Join(c.dir, packsDir, s.Name())
		files, err := os.ReadDir(dir)
		if err != nil {
			return opErr("list packs", dir, err)
		}
		for _, f := range files {
			id, ok := parsePackFileName(f.Name())
			if !ok || known[id] {
				continue
			}
			c.log.Info("removing pack file the index does not name", "pack", f.Name())
			if err := os.Remove(filepath.Join(dir, f.Name())); err != nil {
				return opErr("remove orphan pack", dir, err)
			}
		}
	}
	return nil
}

func parsePackFileName(name string) (uint64, bool) {
	base, ok := strings.CutSuffix(name, ".pack")
	if !ok || len(base) != 16 {
		return 0, false
	}
	id, err := strconv.ParseUint(base, 16, 64)
	return id, err == nil
}

// packFiles caches read-only file descriptors of packs.
type packFiles struct {
	c  *core
	mu sync.Mutex
	m  map[uint64]*packFile
}

type packFile struct {
	f    *os.File
	refs int
	dead bool
}

const maxOpenPacks = 64

func newPackFiles(c *core) *packFiles { return &packFiles{c: c, m: map[uint64]*packFile{}} }

// get returns an open descriptor of the pack and a release function. A
// missing pack file returns an error wrapping fs.ErrNotExist.
func (p *packFiles) get(id uint64) (*os.File, func(), error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pf := p.m[id]
	if pf == nil {
		f, err := os.Open(packPath(p.c.dir, id))
		if err != nil {
			return nil, nil, err
		}
		if len(p.m) >= maxOpenPacks {
			for k, v := range p.m {
				if v.refs == 0 {
					v.f.Close()
					delete(p.m, k)
					break
				}
			}
		}
		pf = &packFile{f: f}
		p.m[id] = pf
	}
	pf.refs++
	return pf.f, func() {
		p.mu.Lock()
		pf.refs--
		if pf.refs == 0 && pf.dead {
			pf.f.Close()
		}
		p.mu.Unlock()
	}, nil
}

// forget drops a pack's descriptor (after GC removed the pack).
func (p *packFiles) forget(id uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pf := p.m[id]; pf != nil {
		delete(p.m, id)
		pf.dead = true
		if pf.refs == 0 {
			pf.f.Close()
		}
	}
}

func (p *packFiles) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, v := range p.m {
		v.dead = true
		if v.refs == 0 {
			v.f.Close()
		}
		delete(p.m, k)
	}
}

// readRecord reads and CRC-checks one record.
func (c *core) readRecord(id uint64, off, length int64) (pack.Record, error) {
	f, release, err := c.files.get(id)
	if err != nil {
		return pack.Record{}, err
	}
	defer release()
	buf := make([]byte, length)
	if _, err := f.ReadAt(buf, off); err != nil {
		return pack.Record{}, &CorruptError{Pack: packName(id), Offset: off, Reason: "short read", Err: err}
	}
	rec, n, err := pack.ParseRecord(buf)
	if err != nil || int64(n) != length {
		return pack.Record{}, &CorruptError{Pack: packName(id), Offset: off, Reason: "record check failed", Err: err}
	}
	return rec, nil
}
