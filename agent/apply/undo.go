package apply

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/protocol/data"
)

// The undo log of a home disk set (docs/agent-formats.md, "Undo log").
//
// A move into the home disks never leaves them between two points without
// a way back: before a block of a home disk is overwritten, its old bytes
// (as the guest sees them) are appended to UndoLogFile in the set
// directory, and the log is fsynced before the overwrite is issued — once
// per batch of blocks. Blocks whose content the move does not change are
// neither logged nor written. Finish removes the log only after the disks
// and the new state are durable. A move that fails, or whose agent dies,
// is rolled back from the log: by the agent itself when the move fails,
// and when the set is next opened (agent start, next move) after a crash.
// The set then holds its old point again, so the controller's next move
// plans from there.
const (
	// UndoLogFile is the undo log's name in a home set's directory.
	UndoLogFile = "undo.log"
	// undoTmpFile is the log being created: renamed to UndoLogFile once
	// its header is durable.
	undoTmpFile = "undo.log.tmp"

	undoMagic   = "FRYUNDO\x00"
	undoVersion = 1
	// undoHeaderSize: magic 8, version 4, flags 4, from 8, prev 8, to 8,
	// reserved 4, CRC-32C 4.
	undoHeaderSize = 48
	// undoRecordHeader: disk 2, flags 2, length 4, block 8.
	undoRecordHeader = 16
	// undoRecordOverhead: the record header and its CRC-32C.
	undoRecordOverhead = undoRecordHeader + 4

	undoFlagZero = 1 // the old bytes were all zeros: none follow
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// undoHeader says which move a log belongs to: the set held point From
// (and was moving to Prev, 0 if it was at a point) when the move to To
// began.
type undoHeader struct {
	From, Prev, To int64
}

func (h undoHeader) encode() []byte {
	b := make([]byte, undoHeaderSize)
	copy(b, undoMagic)
	binary.LittleEndian.PutUint32(b[8:], undoVersion)
	binary.LittleEndian.PutUint64(b[16:], uint64(h.From))
	binary.LittleEndian.PutUint64(b[24:], uint64(h.Prev))
	binary.LittleEndian.PutUint64(b[32:], uint64(h.To))
	binary.LittleEndian.PutUint32(b[44:], crc32.Checksum(b[:44], crc32c))
	return b
}

func decodeUndoHeader(b []byte) (undoHeader, error) {
	if len(b) < undoHeaderSize || string(b[:8]) != undoMagic {
		return undoHeader{}, errors.New("not an undo log (bad magic)")
	}
	if crc32.Checksum(b[:44], crc32c) != binary.LittleEndian.Uint32(b[44:]) {
		return undoHeader{}, errors.New("undo log header checksum mismatch")
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != undoVersion {
		return undoHeader{}, fmt.Errorf("undo log version %d: this agent reads version %d (roll it back with the agent that wrote it)", v, undoVersion)
	}
	h := undoHeader{From: int64(binary.LittleEndian.Uint64(b[16:])), Prev: int64(binary.LittleEndian.Uint64(b[24:])),
		To: int64(binary.LittleEndian.Uint64(b[32:]))}
	if h.From < 0 || h.Prev < 0 || h.To <= 0 {
		return undoHeader{}, fmt.Errorf("undo log header: points %d, %d, %d", h.From, h.Prev, h.To)
	}
	return h, nil
}

type undoKey struct {
	disk  int
	block uint64
}

// undoLog is the open log of the move in progress.
type undoLog struct {
	f      *os.File
	path   string
	size   int64
	logged map[undoKey]bool // blocks whose old bytes are in the log
	// verdict is protect's word on the blocks of the batch being applied:
	// true to write, false when the block already holds its new content.
	// WriteBlock and ZeroBlock consume it.
	verdict map[undoKey]bool
	// reset: the move resets the set (Reset). Its zeroing is left to
	// Finish, which zeroes only the blocks the stream did not name, so a
	// block that holds its content already is never written.
	reset bool
	named map[undoKey]bool // with reset: the blocks written or zeroed
	buf   []byte
}

// createUndo writes a new log holding only its header, durably, and opens
// it for appending.
func createUndo(dir string, h undoHeader) (*undoLog, error) {
	tmp := filepath.Join(dir, undoTmpFile)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, pathErr("create", tmp, err)
	}
	fail := func(op string, err error) (*undoLog, error) {
		f.Close()
		os.Remove(tmp)
		return nil, pathErr(op, tmp, err)
	}
	if _, err := f.WriteAt(h.encode(), 0); err != nil {
		return fail("write", err)
	}
	if err := f.Sync(); err != nil {
		return fail("fsync", err)
	}
	p := filepath.Join(dir, UndoLogFile)
	if err := os.Rename(tmp, p); err != nil {
		return fail("rename", err)
	}
	if err := fsutil.SyncDir(dir); err != nil {
		f.Close()
		return nil, pathErr("fsync", dir, err)
	}
	return &undoLog{f: f, path: p, size: undoHeaderSize, logged: map[undoKey]bool{}, verdict: map[undoKey]bool{}}, nil
}

// add appends the old bytes of a block (not yet durable: sync).
func (u *undoLog) add(k undoKey, old []byte) error {
	zero := allZero(old)
	var flags uint16
	if zero {
		flags = undoFlagZero
	}
	b := u.buf[:0]
	b = binary.LittleEndian.AppendUint16(b, uint16(k.disk))
	b = binary.LittleEndian.AppendUint16(b, flags)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(old)))
	b = binary.LittleEndian.AppendUint64(b, k.block)
	if !zero {
		b = append(b, old...)
	}
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crc32c))
	u.buf = b
	if _, err := u.f.WriteAt(b, u.size); err != nil {
		return pathErr("write", u.path, err)
	}
	u.size += int64(len(b))
	u.logged[k] = true
	return nil
}

func (u *undoLog) sync() error { return pathErr("fsync", u.path, u.f.Sync()) }

func allZero(p []byte) bool {
	for len(p) >= len(zeroBlock) {
		if !bytes.Equal(p[:len(zeroBlock)], zeroBlock[:]) {
			return false
		}
		p = p[len(zeroBlock):]
	}
	return bytes.Equal(p, zeroBlock[:len(p)])
}

// home reports whether d is a home set: disks written in place.
func (d *DiskSet) home() bool { return len(d.state.Paths) != 0 }

// Protect prepares a batch of blocks for writing into a home set: the old
// bytes of each block whose content the batch changes are appended to the
// undo log, and the log is fsynced once, before any of them is written.
// Blocks that already hold their new content (same BLAKE3, or zeros for a
// zero block) are marked so WriteBlock and ZeroBlock skip them. For other
// sets it does nothing. Only between BeginMove and Finish, with no block
// write in flight.
func (d *DiskSet) Protect(blocks []data.Block) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return ErrClosed
	}
	if !d.home() {
		return nil
	}
	return d.protectLocked(blocks)
}

// protectLocked is Protect with d.mu held (read or write).
func (d *DiskSet) protectLocked(blocks []data.Block) error {
	d.umu.Lock()
	defer d.umu.Unlock()
	u := d.undo
	if u == nil {
		return fmt.Errorf("%w: %s: a block written outside a move (call BeginMove)", ErrRefused, d.dir)
	}
	var old []byte
	added := false
	for i := range blocks {
		b := &blocks[i]
		plen := int(b.PlainLen)
		if b.Flags&data.FlagZero != 0 && plen == 0 {
			plen = d.blockSizeOf(int(b.Disk))
		}
		df, off, n, err := d.locate(int(b.Disk), b.Block, plen)
		if err != nil {
			return err // the block is refused when applied, too
		}
		k := undoKey{int(b.Disk), b.Block}
		if cap(old) < n {
			old = make([]byte, n)
		}
		old = old[:n]
		df.wmu.Lock()
		_, err = df.w.ReadAt(old, off)
		df.wmu.Unlock()
		if err != nil {
			return pathErr("read", df.path, err)
		}
		var same bool
		if b.Flags&data.FlagZero != 0 {
			same = allZero(old)
		} else if plen == n {
			same = data.Hash(blake3.Sum256(old)) == b.Hash
		}
		d.undo.verdict[k] = !same
		if same || u.logged[k] {
			continue
		}
		if err := u.add(k, old); err != nil {
			return err
		}
		added = true
	}
	if added {
		return u.sync()
	}
	return nil
}

// guard is called, with d.mu read-held, before a block of a home disk is
// overwritten with p (nil: zeros). It reports whether the write must be
// skipped (the block holds that content already). A block Protect did not
// see is protected on its own: its old bytes logged and fsynced first.
func (d *DiskSet) guard(df *diskFile, k undoKey, off int64, p []byte, n int) (skip bool, err error) {
	d.umu.Lock()
	defer d.umu.Unlock()
	u := d.undo
	if u == nil {
		return false, fmt.Errorf("%w: %s: a block written outside a move (call BeginMove)", ErrRefused, d.dir)
	}
	if u.reset {
		u.named[k] = true
	}
	if write, ok := u.verdict[k]; ok {
		delete(u.verdict, k)
		return !write, nil
	}
	old := make([]byte, n)
	df.wmu.Lock()
	_, err = df.w.ReadAt(old, off)
	df.wmu.Unlock()
	if err != nil {
		return false, pathErr("read", df.path, err)
	}
	if p == nil && allZero(old) || p != nil && bytes.Equal(old, p[:n]) {
		return true, nil
	}
	if u.logged[k] {
		return false, nil
	}
	if err := u.add(k, old); err != nil {
		return false, err
	}
	return false, u.sync()
}

// beginUndo starts the log of a move of a home set to point to: first any
// log an earlier move left is settled (rolled back or dropped), then a new
// one is made durable, before the state says the set is moving.
func (d *DiskSet) beginUndo(to int64) error {
	if err := d.recoverUndo(); err != nil {
		return err
	}
	u, err := createUndo(d.dir, undoHeader{From: d.state.Point, Prev: d.state.MovingTo, To: to})
	if err != nil {
		return err
	}
	d.undo = u
	return nil
}

// endUndo removes the log of a finished move: the disks and the state
// holding the new point are durable already.
func (d *DiskSet) endUndo() error {
	u := d.undo
	d.undo = nil
	if u == nil {
		return nil
	}
	u.f.Close()
	if err := os.Remove(u.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return pathErr("remove", u.path, err)
	}
	return pathErr("fsync", d.dir, fsutil.SyncDir(d.dir))
}

// AbortMove rolls an unfinished move of a home set back from its undo log
// at once: the disks hold their old bytes, the set its old point. Sets
// without an undo log are left as they are (marked moving).
func (d *DiskSet) AbortMove() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.undo != nil {
		d.undo.f.Close()
		d.undo = nil
	}
	if !d.home() {
		return nil
	}
	return d.recoverUndo()
}

// recoverUndo settles the undo log found in the set directory: when the
// state says the set is in the middle of the move the log belongs to, the
// move is rolled back — every logged block written back, newest first,
// the disks fsynced, the state restored to the point the move started
// from — and the log removed; a log of any other move (the move finished,
// or its rollback did, before the log was removed) is removed. Rolling
// back twice writes the same bytes: a crash during a rollback is rolled
// back again.
func (d *DiskSet) recoverUndo() error {
	_ = os.Remove(filepath.Join(d.dir, undoTmpFile)) // never referenced by a state
	p := filepath.Join(d.dir, UndoLogFile)
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return pathErr("open", p, err)
	}
	defer f.Close()
	var hb [undoHeaderSize]byte
	if _, err := io.ReadFull(f, hb[:]); err != nil {
		return pathErr("read", p, fmt.Errorf("%w: undo log header: %v", ErrCorrupt, err))
	}
	h, err := decodeUndoHeader(hb[:])
	if err != nil {
		return pathErr("read", p, fmt.Errorf("%w: %v", ErrCorrupt, err))
	}
	if d.state.MovingTo == 0 || d.state.MovingTo != h.To || d.state.Point != h.From {
		d.log().Info("removing the undo log of a settled move", "set", d.dir, "log_to", h.To, "point", d.state.Point, "moving_to", d.state.MovingTo)
		return d.removeUndoFile(p)
	}
	recs, err := scanUndo(f, d)
	if err != nil {
		return err
	}
	for i := len(recs) - 1; i >= 0; i-- {
		r := recs[i]
		df := d.files[r.disk]
		var err error
		df.wmu.Lock()
		if r.zero {
			err = df.w.Zero(r.off, int64(r.n))
		} else {
			buf := make([]byte, r.n)
			if _, err = f.ReadAt(buf, r.data); err == nil {
				_, err = df.w.WriteAt(buf, r.off)
			}
		}
		df.wmu.Unlock()
		if err != nil {
			return pathErr("roll back", df.path, err)
		}
	}
	for _, df := range d.files {
		if err := df.w.Sync(); err != nil {
			return pathErr("fsync", df.path, err)
		}
	}
	next := d.state
	next.MovingTo = h.Prev
	if err := writeState(d.dir, next); err != nil {
		return err
	}
	d.state = next
	d.log().Warn("an interrupted move of the home disks was rolled back from the undo log",
		"set", d.dir, "point", next.Point, "was_moving_to", h.To, "blocks", len(recs))
	return d.removeUndoFile(p)
}

func (d *DiskSet) removeUndoFile(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return pathErr("remove", p, err)
	}
	return pathErr("fsync", d.dir, fsutil.SyncDir(d.dir))
}

// undoRec is a logged block: where it goes and where its bytes are.
type undoRec struct {
	disk int
	off  int64 // guest offset
	n    int
	zero bool
	data int64 // offset of the bytes in the log
}

// scanUndo reads the records after the header up to the end or the first
// record that is torn (short, a bad checksum, an address outside the set):
// records are fsynced before their blocks are overwritten, so a torn tail
// belongs to blocks that were never written.
func scanUndo(f *os.File, d *DiskSet) ([]undoRec, error) {
	r := bufio.NewReaderSize(f, 1<<20)
	pos := int64(undoHeaderSize)
	var recs []undoRec
	var hdr [undoRecordHeader]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return recs, nil
		}
		disk := int(binary.LittleEndian.Uint16(hdr[0:]))
		flags := binary.LittleEndian.Uint16(hdr[2:])
		n := int(binary.LittleEndian.Uint32(hdr[4:]))
		block := binary.LittleEndian.Uint64(hdr[8:])
		if disk >= len(d.files) || n <= 0 || n > data.MaxBlockSize || flags&^undoFlagZero != 0 {
			return recs, nil
		}
		_, off, want, err := d.locate(disk, block, n)
		if err != nil || want != n {
			return recs, nil
		}
		body := 0
		if flags&undoFlagZero == 0 {
			body = n
		}
		buf = append(buf[:0], hdr[:]...)
		buf = append(buf, make([]byte, body+4)...)
		if _, err := io.ReadFull(r, buf[undoRecordHeader:]); err != nil {
			return recs, nil
		}
		end := undoRecordHeader + body
		if crc32.Checksum(buf[:end], crc32c) != binary.LittleEndian.Uint32(buf[end:]) {
			return recs, nil
		}
		recs = append(recs, undoRec{disk: disk, off: off, n: n, zero: body == 0, data: pos + undoRecordHeader})
		pos += int64(end + 4)
	}
}

func (d *DiskSet) log() *slog.Logger {
	if d.opts.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.opts.Logger
}

// resetHome makes home disk i all zeros within a move, except the blocks
// in keep, logging the old bytes of its non-zero blocks first, a batch at
// a time. Blocks that are zeros already are not written.
func (d *DiskSet) resetHome(i int, df *diskFile, keep map[undoKey]bool) error {
	const per = 256
	bs := int64(df.disk.BlockSize)
	nb := uint64((df.disk.Size + bs - 1) / bs)
	batch := make([]data.Block, 0, per)
	for first := uint64(0); first < nb; first += per {
		batch = batch[:0]
		for b := first; b < min(first+per, nb); b++ {
			if keep[undoKey{i, b}] {
				continue
			}
			n := min(bs, df.disk.Size-int64(b)*bs)
			batch = append(batch, data.Block{Disk: uint16(i), Block: b, Flags: data.FlagZero, PlainLen: uint32(n)})
		}
		if err := d.protectLocked(batch); err != nil {
			return err
		}
		for _, b := range batch {
			off := int64(b.Block) * bs
			skip, err := d.guard(df, undoKey{i, b.Block}, off, nil, int(b.PlainLen))
			if err != nil {
				return err
			}
			if skip {
				continue
			}
			df.wmu.Lock()
			err = df.w.Zero(off, int64(b.PlainLen))
			df.wmu.Unlock()
			if err != nil {
				return pathErr("zero", df.path, err)
			}
		}
	}
	return nil
}
