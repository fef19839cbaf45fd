package disk

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"sort"
)

// In-place writing of VHDX (fixed and dynamic), from [MS-VHDX] 2.2.2
// (headers) and 2.3 (log).
//
// Payload blocks already present are overwritten where they are. A write
// into a block that is not present allocates a new block at the end of
// the file (1 MiB aligned) and then changes the BAT through the log:
//
//  1. the block's data written and flushed (nothing references it yet);
//  2. a header update that sets a new LogGuid;
//  3. a log entry whose data descriptors carry the new BAT sectors,
//     written at the log's head (it is its own tail: every earlier entry
//     is already applied) and flushed;
//  4. the BAT sectors written in place and flushed;
//  5. a header update that sets the LogGuid back to zero.
//
// A crash between 3 and 5 leaves a log that any reader (Hyper-V, qemu
// after `qemu-img check -r all`, this package) replays; before 3, an
// unreferenced block at the end of the file; after 5, nothing to do.
// Each update uses a fresh LogGuid, so entries of earlier updates are
// never part of an active sequence.
//
// On open, the FileWriteGuid and DataWriteGuid are replaced (the spec
// requires both to change before the file or the disk's data is first
// modified), and a log left by a crash is replayed into the file first.

// Failpoints of a VHDX metadata update, in order.
const (
	InPlaceStepVHDXData     = "vhdx-data-synced"     // new payload block flushed, BAT unchanged
	InPlaceStepVHDXLog      = "vhdx-log-written"     // log entry written, not flushed
	InPlaceStepVHDXLogSync  = "vhdx-log-synced"      // log entry flushed, BAT not yet in place
	InPlaceStepVHDXMetadata = "vhdx-metadata-synced" // BAT sectors in place and flushed
)

// vhdxMaxDescriptors bounds the BAT sectors one log entry carries.
const vhdxMaxDescriptors = 64

type vhdxInPlace struct {
	f      *os.File
	path   string
	opts   InPlaceOptions
	log    *slog.Logger
	h      vhdxHeader // the current header
	hSlot  int64      // file offset of the current header
	size   int64
	bs     int64 // block size
	ratio  int64 // chunk ratio
	batOff int64
	bat    []byte // the BAT region as on disk
	end    int64  // file size

	logGUID guid   // the GUID of the log while an update uses it, else zero
	logHead int64  // offset inside the log of the next entry
	seq     uint64 // sequence number of the next entry
}

func openVHDXInPlace(f *os.File, path string, opts InPlaceOptions) (*vhdxInPlace, error) {
	w := &vhdxInPlace{f: f, path: path, opts: opts, log: opts.logger().With("image", path)}
	if err := w.readHeader(); err != nil {
		return nil, err
	}
	// Read it as any reader would (a pending log replayed in memory), so
	// that a refusal leaves the file untouched.
	c, err := openContainer(path, nil)
	if err != nil {
		return nil, ioError(FormatVHDX, path, "open", err)
	}
	im, _, err := (&opener{}).openVHDX(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	m := im.m.(*vhdxMapper)
	im.Close()
	if m.diff {
		return nil, unsupportedf(FormatVHDX, path, "differencing VHDX: writing it in place would need sector bitmaps and "+
			"copy-on-write from its parent; merge it (Merge-VHD) first or reprotect with --target")
	}
	if !w.h.logGUID.isZero() {
		if err := w.replay(); err != nil {
			return nil, err
		}
	}
	w.size, w.bs, w.ratio = m.size, m.blockSize, m.chunkRatio
	if err := w.readBAT(int64(len(m.bat))); err != nil {
		return nil, err
	}
	// The file and the disk's data are about to change: new FileWriteGuid
	// and DataWriteGuid, written to both header slots.
	w.h.fileWrite, w.h.dataWrite = newGUID(), newGUID()
	for range 2 {
		if err := w.updateHeader(); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func newGUID() guid {
	var g guid
	_, _ = rand.Read(g[:])
	g[7] = g[7]&0x0f | 0x40 // version 4 (mixed-endian field 3)
	g[8] = g[8]&0x3f | 0x80
	return g
}

func (w *vhdxInPlace) readHeader() error {
	buf := make([]byte, vhdxHeaderArea)
	if _, err := w.f.ReadAt(buf, 0); err != nil {
		return ioError(FormatVHDX, w.path, "read headers", err)
	}
	h1, err1 := parseVHDXHeader(buf[vhdxHeaderOff1:])
	h2, err2 := parseVHDXHeader(buf[vhdxHeaderOff2:])
	switch {
	case err1 != nil && err2 != nil:
		return corruptf(FormatVHDX, w.path, "both headers invalid: %v; %v", err1, err2)
	case err1 != nil || (err2 == nil && h2.seq > h1.seq):
		w.h, w.hSlot = *h2, vhdxHeaderOff2
	default:
		w.h, w.hSlot = *h1, vhdxHeaderOff1
	}
	if w.h.version != 1 || w.h.logVersion != 0 {
		return unsupportedf(FormatVHDX, w.path, "version %d / log version %d not supported", w.h.version, w.h.logVersion)
	}
	fi, err := w.f.Stat()
	if err != nil {
		return ioError(FormatVHDX, w.path, "stat", err)
	}
	w.end = fi.Size()
	return nil
}

// updateHeader writes w.h with the next sequence number into the slot
// that is not current, and flushes: [MS-VHDX] 2.2.2.1.
func (w *vhdxInPlace) updateHeader() error {
	w.h.seq++
	b := make([]byte, vhdxHeaderSize)
	le := binary.LittleEndian
	copy(b, "head")
	le.PutUint64(b[8:], w.h.seq)
	copy(b[16:], w.h.fileWrite[:])
	copy(b[32:], w.h.dataWrite[:])
	copy(b[48:], w.h.logGUID[:])
	le.PutUint16(b[64:], w.h.logVersion)
	le.PutUint16(b[66:], w.h.version)
	le.PutUint32(b[68:], w.h.logLength)
	le.PutUint64(b[72:], w.h.logOffset)
	le.PutUint32(b[4:], vhdxChecksum(b))
	slot := int64(vhdxHeaderOff1)
	if w.hSlot == vhdxHeaderOff1 {
		slot = vhdxHeaderOff2
	}
	if _, err := w.f.WriteAt(b, slot); err != nil {
		return ioError(FormatVHDX, w.path, "write header", err)
	}
	w.hSlot = slot
	return w.sync()
}

// replay applies a log left by a crash to the file, then clears the
// header's LogGuid: what [MS-VHDX] 2.3.3 asks of a writer before it
// modifies the file.
func (w *vhdxInPlace) replay() error {
	c, err := openContainer(w.path, nil)
	if err != nil {
		return ioError(FormatVHDX, w.path, "open for replay", err)
	}
	defer c.Close()
	ov, err := replayVHDXLog(c, &w.h)
	var le *vhdxLogError
	if errors.As(err, &le) {
		return dirtyf(FormatVHDX, w.path, "log replay impossible: %s", le.reason)
	}
	if err != nil {
		return ioError(FormatVHDX, w.path, "read log", err)
	}
	if ov.size > w.end {
		if err := w.f.Truncate(ov.size); err != nil {
			return ioError(FormatVHDX, w.path, "extend for replay", err)
		}
		w.end = ov.size
	}
	for _, z := range ov.zeros {
		if err := writeZeros(w.f, FormatVHDX, w.path, z.Offset, z.Length); err != nil {
			return err
		}
	}
	for off, page := range ov.pages {
		if _, err := w.f.WriteAt(page, off); err != nil {
			return ioError(FormatVHDX, w.path, "replay log", err)
		}
	}
	if err := w.sync(); err != nil {
		return err
	}
	w.log.Info("replayed the VHDX log left by an interrupted write", "pages", len(ov.pages))
	w.h.logGUID = guid{}
	return w.updateHeader()
}

func (w *vhdxInPlace) readBAT(entries int64) error {
	rt := make([]byte, vhdxRegionSize)
	var regions []vhdxRegion
	var err error
	for _, off := range []int64{vhdxRegionOff1, vhdxRegionOff2} {
		if _, rerr := w.f.ReadAt(rt, off); rerr != nil {
			return ioError(FormatVHDX, w.path, "read region table", rerr)
		}
		if regions, err = parseVHDXRegionTable(rt); err == nil {
			break
		}
	}
	if err != nil {
		return corruptf(FormatVHDX, w.path, "region tables invalid: %v", err)
	}
	for _, r := range regions {
		if r.id == vhdxBATGUID {
			w.batOff = int64(r.off)
			w.bat = make([]byte, (entries*8+vhdxLogSector-1)&^(vhdxLogSector-1))
			if int64(len(w.bat)) > int64(r.length) {
				w.bat = w.bat[:r.length]
			}
			if _, err := w.f.ReadAt(w.bat, w.batOff); err != nil {
				return ioError(FormatVHDX, w.path, "read BAT", err)
			}
			return nil
		}
	}
	return corruptf(FormatVHDX, w.path, "no BAT region")
}

func (w *vhdxInPlace) sync() error {
	if err := w.f.Sync(); err != nil {
		return ioError(FormatVHDX, w.path, "sync", err)
	}
	return nil
}

func (w *vhdxInPlace) Size() int64 { return w.size }
func (w *vhdxInPlace) Sync() error { return w.sync() }

func (w *vhdxInPlace) Close() error {
	err := w.sync()
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = ioError(FormatVHDX, w.path, "close", cerr)
	}
	return err
}

func (w *vhdxInPlace) entry(block int64) uint64 {
	return binary.LittleEndian.Uint64(w.bat[(block+block/w.ratio)*8:])
}

func (w *vhdxInPlace) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange(FormatVHDX, w.path, off, int64(len(p)), w.size); err != nil {
		return 0, err
	}
	return len(p), w.update(off, int64(len(p)), p)
}

// ReadAt reads guest bytes through the writer's BAT: blocks not fully
// present read zeros (differencing images are refused at open).
func (w *vhdxInPlace) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange(FormatVHDX, w.path, off, int64(len(p)), w.size); err != nil {
		return 0, err
	}
	for done := int64(0); done < int64(len(p)); {
		bi, in := (off+done)/w.bs, (off+done)%w.bs
		k := min(w.bs-in, int64(len(p))-done)
		dst := p[done : done+k]
		if e := w.entry(bi); e&7 == vhdxBlockFullyPresent {
			if _, err := w.f.ReadAt(dst, vhdxFileOff(e)+in); err != nil {
				return int(done), ioError(FormatVHDX, w.path, "read data", err)
			}
		} else {
			clear(dst)
		}
		done += k
	}
	return len(p), nil
}

func (w *vhdxInPlace) Zero(off, n int64) error {
	if err := checkRange(FormatVHDX, w.path, off, n, w.size); err != nil {
		return err
	}
	return w.update(off, n, nil)
}

func (w *vhdxInPlace) update(off, n int64, p []byte) error {
	changed := map[int64]uint64{} // BAT index -> new entry
	wrote := false
	for done := int64(0); done < n; {
		bi, in := (off+done)/w.bs, (off+done)%w.bs
		k := min(w.bs-in, n-done)
		e := w.entry(bi)
		var chunk []byte
		if p != nil {
			chunk = p[done : done+k]
		}
		switch {
		case e&7 == vhdxBlockFullyPresent:
			host := vhdxFileOff(e) + in
			if chunk != nil {
				if _, err := w.f.WriteAt(chunk, host); err != nil {
					return ioError(FormatVHDX, w.path, "write data", err)
				}
			} else if err := punchHole(w.f, host, k); err != nil {
				if err := writeZeros(w.f, FormatVHDX, w.path, host, k); err != nil {
					return err
				}
			}
		case chunk == nil:
			// Not present, zero or unmapped: reads zeros already.
		default:
			x := (w.end + vhdxMB - 1) &^ (vhdxMB - 1)
			if err := w.f.Truncate(x + w.bs); err != nil {
				return ioError(FormatVHDX, w.path, "extend for a new block", err)
			}
			w.end = x + w.bs
			if _, err := w.f.WriteAt(chunk, x+in); err != nil {
				return ioError(FormatVHDX, w.path, "write data", err)
			}
			wrote = true
			changed[bi+bi/w.ratio] = uint64(x) | vhdxBlockFullyPresent
		}
		done += k
		if len(changed) >= vhdxMaxDescriptors {
			if err := w.commit(changed); err != nil {
				return err
			}
			changed, wrote = map[int64]uint64{}, false
		}
	}
	if !wrote {
		return nil
	}
	return w.commit(changed)
}

// commit makes BAT changes durable through the log.
func (w *vhdxInPlace) commit(changed map[int64]uint64) error {
	if len(changed) == 0 {
		return nil
	}
	if err := w.sync(); err != nil {
		return err
	}
	w.opts.fail(InPlaceStepVHDXData)
	if w.logGUID.isZero() {
		w.logGUID = newGUID()
		w.h.logGUID = w.logGUID
		if err := w.updateHeader(); err != nil {
			return err
		}
	}
	sectors := map[int64]bool{}
	for idx, e := range changed {
		binary.LittleEndian.PutUint64(w.bat[idx*8:], e)
		sectors[(idx*8)&^(vhdxLogSector-1)] = true
	}
	offs := make([]int64, 0, len(sectors))
	for s := range sectors {
		offs = append(offs, s)
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	if err := w.writeLogEntry(offs); err != nil {
		return err
	}
	for _, s := range offs {
		if _, err := w.f.WriteAt(w.bat[s:s+vhdxLogSector], w.batOff+s); err != nil {
			return ioError(FormatVHDX, w.path, "write BAT", err)
		}
	}
	if err := w.sync(); err != nil {
		return err
	}
	w.opts.fail(InPlaceStepVHDXMetadata)
	// Every change is in place: retire the log, so that a crash from here
	// leaves a file any reader opens without replay (qemu refuses to open
	// a file with a log to replay read-only).
	w.logGUID, w.h.logGUID = guid{}, guid{}
	return w.updateHeader()
}

// writeLogEntry writes one log entry carrying the BAT sectors at offs
// (offsets inside the BAT) and flushes it: [MS-VHDX] 2.3.1.
func (w *vhdxInPlace) writeLogEntry(offs []int64) error {
	le := binary.LittleEndian
	w.seq++
	descBytes := (vhdxLogEntryHeader + int64(len(offs))*vhdxLogDescriptor + vhdxLogSector - 1) &^ (vhdxLogSector - 1)
	length := descBytes + int64(len(offs))*vhdxLogSector
	logLen := int64(w.h.logLength)
	if length > logLen {
		return unsupportedf(FormatVHDX, w.path, "log of %d bytes too small for an entry of %d", logLen, length)
	}
	e := make([]byte, length)
	copy(e, "loge")
	le.PutUint32(e[8:], uint32(length))
	le.PutUint32(e[12:], uint32(w.logHead)) // its own tail
	le.PutUint64(e[16:], w.seq)
	le.PutUint32(e[24:], uint32(len(offs)))
	copy(e[32:], w.logGUID[:])
	le.PutUint64(e[48:], uint64(w.end))
	le.PutUint64(e[56:], uint64(w.end))
	for i, s := range offs {
		page := w.bat[s : s+vhdxLogSector]
		d := e[vhdxLogEntryHeader+i*vhdxLogDescriptor:]
		copy(d, "desc")
		copy(d[4:8], page[4092:])
		copy(d[8:16], page[:8])
		le.PutUint64(d[16:], uint64(w.batOff+s))
		le.PutUint64(d[24:], w.seq)
		ds := e[descBytes+int64(i)*vhdxLogSector:]
		copy(ds, "data")
		le.PutUint32(ds[4:], uint32(w.seq>>32))
		copy(ds[8:4092], page[8:4092])
		le.PutUint32(ds[4092:], uint32(w.seq))
	}
	le.PutUint32(e[4:], vhdxChecksum(e))
	// The log is circular: an entry may wrap past its end.
	first := min(length, logLen-w.logHead)
	logOff := int64(w.h.logOffset)
	if _, err := w.f.WriteAt(e[:first], logOff+w.logHead); err != nil {
		return ioError(FormatVHDX, w.path, "write log", err)
	}
	if first < length {
		if _, err := w.f.WriteAt(e[first:], logOff); err != nil {
			return ioError(FormatVHDX, w.path, "write log", err)
		}
	}
	w.opts.fail(InPlaceStepVHDXLog)
	if err := w.sync(); err != nil {
		return err
	}
	w.opts.fail(InPlaceStepVHDXLogSync)
	w.logHead = (w.logHead + length) % logLen
	return nil
}

var _ BlockWriter = (*vhdxInPlace)(nil)
