package disk

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"
)

// VHDX log replay, [MS-VHDX] 2.3.
//
// The log holds metadata writes (BAT, metadata region) that a host made
// durable in the log before writing them in place. A file whose header
// names a log GUID may not have them in place yet. The agent reads live
// or cloned files it must not modify, so replay builds an in-memory
// overlay of the logged writes over the file instead of writing them.

const (
	vhdxLogSector      = 4 << 10
	vhdxLogEntryHeader = 64
	vhdxLogDescriptor  = 32
)

// vhdxLogError says why a log cannot be replayed.
type vhdxLogError struct {
	unsupported bool
	reason      string
}

func (e *vhdxLogError) Error() string { return e.reason }

func logBad(format string, args ...any) error {
	return &vhdxLogError{reason: fmt.Sprintf(format, args...)}
}

// overlayFile is a container file with replayed log writes laid over it.
type overlayFile struct {
	fileReader
	size  int64
	pages map[int64][]byte // 4 KiB-aligned file offset -> logged sector
	zeros []Extent         // zeroed file ranges, applied before pages
}

func (o *overlayFile) Size() int64 { return o.size }

func (o *overlayFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= o.size {
		return 0, io.EOF
	}
	n := int64(len(p))
	if n > o.size-off {
		n = o.size - off
	}
	if err := readPadded(o.fileReader, p[:n], off); err != nil {
		return 0, err
	}
	end := off + n
	for _, z := range o.zeros {
		lo, hi := max(z.Offset, off), min(z.End(), end)
		if lo < hi {
			clear(p[lo-off : hi-off])
		}
	}
	for page := off &^ (vhdxLogSector - 1); page < end; page += vhdxLogSector {
		data, ok := o.pages[page]
		if !ok {
			continue
		}
		lo, hi := max(page, off), min(page+vhdxLogSector, end)
		copy(p[lo-off:hi-off], data[lo-page:hi-page])
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// dataRanges adds the logged sectors to the file's own data ranges.
func (o *overlayFile) dataRanges(off, n int64) ([]Extent, error) {
	rs, err := o.fileReader.dataRanges(off, n)
	if err != nil {
		return nil, err
	}
	for page := range o.pages {
		lo, hi := max(page, off), min(page+vhdxLogSector, off+n)
		if lo < hi {
			rs = append(rs, Extent{lo, hi - lo})
		}
	}
	return normalize(rs), nil
}

// vhdxLogEntry is one parsed, checksummed log entry.
type vhdxLogEntry struct {
	pos            int64 // offset inside the log
	length         int64
	tail           int64
	seq            uint64
	flushedFileOff int64
	lastFileOff    int64
	raw            []byte
}

// replayVHDXLog returns the file with the active log sequence applied.
func replayVHDXLog(f fileReader, h *vhdxHeader) (*overlayFile, error) {
	if h.logVersion != 0 {
		return nil, &vhdxLogError{unsupported: true, reason: fmt.Sprintf("log version %d not supported", h.logVersion)}
	}
	logLen, logOff := int64(h.logLength), int64(h.logOffset)
	if logLen == 0 || logLen%vhdxMB != 0 || logLen > vhdxMaxLog || logOff%vhdxMB != 0 || logOff < vhdxHeaderArea {
		return nil, logBad("log region %d+%d invalid", logOff, logLen)
	}
	if logOff+logLen > f.Size() {
		return nil, logBad("log region %d+%d beyond end of file", logOff, logLen)
	}
	buf := make([]byte, logLen)
	ok, err := readExact(f, buf, logOff)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, logBad("log region %d+%d beyond end of file", logOff, logLen)
	}
	entries := scanVHDXLog(buf, h.logGUID)
	active := activeVHDXSequence(entries, logLen)
	if active == nil {
		if !anyVHDXLogHeader(buf, h.logGUID) {
			// No entry of this log was begun: a writer sets the LogGuid
			// before its first entry and changes nothing the log covers
			// before that entry is flushed, so a crash in between leaves
			// the file whole, and the log is empty (qemu reads it so).
			// Entries of this GUID that fail their checks are another
			// matter: what they covered may be half written.
			return &overlayFile{fileReader: f, size: f.Size(), pages: map[int64][]byte{}}, nil
		}
		return nil, logBad("log GUID %s is set but the log holds no valid sequence of entries", h.logGUID)
	}
	head := active[len(active)-1]
	if f.Size() < head.flushedFileOff {
		return nil, logBad("file is %d bytes, shorter than the %d bytes the log says were flushed: the file was truncated", f.Size(), head.flushedFileOff)
	}
	o := &overlayFile{fileReader: f, size: max(f.Size(), head.lastFileOff), pages: map[int64][]byte{}}
	for _, e := range active {
		if err := o.apply(e); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// anyVHDXLogHeader reports whether some sector of the log begins an entry
// header of log id, valid or not.
func anyVHDXLogHeader(log []byte, id guid) bool {
	for pos := 0; pos+vhdxLogEntryHeader <= len(log); pos += vhdxLogSector {
		if string(log[pos:pos+4]) == "loge" && guid(log[pos+32:pos+48]) == id {
			return true
		}
	}
	return false
}

// scanVHDXLog finds every valid entry: signature, length, GUID, checksum.
func scanVHDXLog(log []byte, id guid) map[int64]*vhdxLogEntry {
	le := binary.LittleEndian
	out := map[int64]*vhdxLogEntry{}
	n := int64(len(log))
	for pos := int64(0); pos < n; pos += vhdxLogSector {
		hdr := log[pos : pos+vhdxLogEntryHeader]
		if string(hdr[:4]) != "loge" {
			continue
		}
		length := int64(le.Uint32(hdr[8:]))
		if length < vhdxLogSector || length%vhdxLogSector != 0 || length > n {
			continue
		}
		var g guid
		copy(g[:], hdr[32:48])
		if g != id {
			continue
		}
		raw := circular(log, pos, length)
		if le.Uint32(raw[4:]) != vhdxChecksum(raw) {
			continue
		}
		out[pos] = &vhdxLogEntry{pos: pos, length: length, tail: int64(le.Uint32(hdr[12:])), seq: le.Uint64(hdr[16:]),
			flushedFileOff: int64(le.Uint64(hdr[48:])), lastFileOff: int64(le.Uint64(hdr[56:])), raw: raw}
	}
	return out
}

// circular copies n bytes of the circular log starting at pos.
func circular(log []byte, pos, n int64) []byte {
	out := make([]byte, n)
	k := copy(out, log[pos:])
	copy(out[k:], log[:n-int64(k)])
	return out
}

// activeVHDXSequence returns the entries of the valid sequence whose head
// has the largest sequence number, tail first; nil if there is none.
func activeVHDXSequence(entries map[int64]*vhdxLogEntry, logLen int64) []*vhdxLogEntry {
	heads := make([]*vhdxLogEntry, 0, len(entries))
	for _, e := range entries {
		heads = append(heads, e)
	}
	sort.Slice(heads, func(i, j int) bool { return heads[i].seq > heads[j].seq })
	for _, h := range heads {
		if h.tail%vhdxLogSector != 0 || h.tail >= logLen {
			continue
		}
		var seq []*vhdxLogEntry
		pos := h.tail
		for steps := int64(0); steps <= logLen/vhdxLogSector; steps++ {
			e, ok := entries[pos]
			if !ok || (len(seq) > 0 && e.seq != seq[len(seq)-1].seq+1) {
				break
			}
			seq = append(seq, e)
			if e == h {
				return seq
			}
			pos = (pos + e.length) % logLen
		}
	}
	return nil
}

// apply lays one entry's zero and data descriptors over the file.
func (o *overlayFile) apply(e *vhdxLogEntry) error {
	le := binary.LittleEndian
	count := int64(le.Uint32(e.raw[24:]))
	descBytes := (vhdxLogEntryHeader + count*vhdxLogDescriptor + vhdxLogSector - 1) &^ (vhdxLogSector - 1)
	if count > e.length/vhdxLogDescriptor || descBytes > e.length {
		return logBad("log entry %d has %d descriptors, more than fit", e.seq, count)
	}
	data := descBytes
	for i := int64(0); i < count; i++ {
		d := e.raw[vhdxLogEntryHeader+i*vhdxLogDescriptor:]
		if le.Uint64(d[24:]) != e.seq {
			return logBad("log entry %d descriptor %d has sequence %d", e.seq, i, le.Uint64(d[24:]))
		}
		fileOff := int64(le.Uint64(d[16:]))
		if fileOff < 0 || fileOff%vhdxLogSector != 0 || fileOff > vhdxMaxSize {
			return logBad("log entry %d descriptor %d targets unaligned offset %d", e.seq, i, fileOff)
		}
		switch string(d[:4]) {
		case "zero":
			n := int64(le.Uint64(d[8:]))
			if n <= 0 || n%vhdxLogSector != 0 || n > vhdxMaxSize {
				return logBad("log entry %d zero descriptor of %d bytes", e.seq, n)
			}
			z := Extent{fileOff, n}
			for page := range o.pages {
				if page >= z.Offset && page < z.End() {
					delete(o.pages, page)
				}
			}
			o.zeros = append(o.zeros, z)
		case "desc":
			if data+vhdxLogSector > e.length {
				return logBad("log entry %d has fewer data sectors than descriptors", e.seq)
			}
			s := e.raw[data : data+vhdxLogSector]
			if string(s[:4]) != "data" || uint64(le.Uint32(s[4:]))<<32|uint64(le.Uint32(s[4092:])) != e.seq {
				return logBad("log entry %d data sector %d is not part of it", e.seq, i)
			}
			page := make([]byte, vhdxLogSector)
			copy(page[:8], d[8:16])       // leading bytes from the descriptor
			copy(page[8:4092], s[8:4092]) // the sector's payload
			copy(page[4092:], d[4:8])     // trailing bytes from the descriptor
			o.pages[fileOff] = page
			data += vhdxLogSector
		default:
			return logBad("log entry %d descriptor %d has unknown signature %q", e.seq, i, d[:4])
		}
	}
	return nil
}
