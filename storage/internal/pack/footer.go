package pack

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Entry is one record as listed by a footer.
type Entry struct {
	Type   uint8
	Offset int64
	Length int64 // whole record, header and CRC included
	Hash   [32]byte
}

// AppendFooter appends a footer record listing entries, then the 12-byte
// trailer (footer record length u32, trailer magic).
func AppendFooter(dst []byte, entries []Entry) []byte {
	e := enc{b: make([]byte, 0, 4+len(entries)*45)}
	e.u32(uint32(len(entries)))
	for _, en := range entries {
		e.u8(en.Type)
		e.u64(uint64(en.Offset))
		e.u32(uint32(en.Length))
		if en.Type == TypeChunk {
			e.raw(en.Hash[:])
		}
	}
	start := len(dst)
	dst = AppendRecord(dst, TypeFooter, 0, e.b)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(dst)-start))
	return append(dst, trailerMagic[:]...)
}

// HasTrailer reports whether b (the last TrailerSize bytes of a file, or
// more) ends with the trailer magic.
func HasTrailer(b []byte) bool {
	return len(b) >= TrailerSize && [8]byte(b[len(b)-8:]) == trailerMagic
}

// FooterLen returns the length of the footer record from the trailer.
func FooterLen(trailer []byte) (int, error) {
	if !HasTrailer(trailer) {
		return 0, formatErr("no trailer magic")
	}
	n := int(binary.LittleEndian.Uint32(trailer[len(trailer)-TrailerSize:]))
	if n < RecordOverhead+4 || n > MaxPayload+RecordOverhead {
		return 0, formatErr("footer length %d", n)
	}
	return n, nil
}

// ParseFooter decodes the footer record plus trailer that end b, and checks
// that the listed records lie in [HeaderSize, footerOffset) in order.
func ParseFooter(b []byte) ([]Entry, int64, error) {
	n, err := FooterLen(b)
	if err != nil {
		return nil, 0, err
	}
	if len(b) < n+TrailerSize {
		return nil, 0, fmt.Errorf("%w: footer needs %d bytes", ErrTruncated, n+TrailerSize)
	}
	rec, rn, err := ParseRecord(b[len(b)-TrailerSize-n:])
	if err != nil {
		return nil, 0, err
	}
	if rn != n || rec.Type != TypeFooter {
		return nil, 0, formatErr("footer record type %d length %d", rec.Type, rn)
	}
	d := dec{b: rec.Payload}
	cnt := int(d.u32())
	if cnt > len(d.b)/13 {
		return nil, 0, formatErr("footer count %d exceeds payload", cnt)
	}
	entries := make([]Entry, 0, cnt)
	next := int64(HeaderSize)
	for i := 0; i < cnt && d.err == nil; i++ {
		en := Entry{Type: d.u8(), Offset: int64(d.u64()), Length: int64(d.u32())}
		if en.Type == TypeChunk {
			en.Hash = d.hash()
		}
		if d.err == nil && (en.Offset != next || en.Length < RecordOverhead) {
			return nil, 0, formatErr("footer entry %d at %d length %d, want offset %d", i, en.Offset, en.Length, next)
		}
		next = en.Offset + en.Length
		entries = append(entries, en)
	}
	if err := d.end(); err != nil {
		return nil, 0, err
	}
	return entries, next, nil
}

// ReadFooter reads and parses the footer of a pack of the given size. The
// returned offset is where the footer record starts (the end of the data).
func ReadFooter(r io.ReaderAt, size int64) ([]Entry, int64, error) {
	if size < HeaderSize+TrailerSize {
		return nil, 0, formatErr("pack of %d bytes has no footer", size)
	}
	var tr [TrailerSize]byte
	if _, err := r.ReadAt(tr[:], size-TrailerSize); err != nil {
		return nil, 0, err
	}
	n, err := FooterLen(tr[:])
	if err != nil {
		return nil, 0, err
	}
	start := size - TrailerSize - int64(n)
	if start < HeaderSize {
		return nil, 0, formatErr("footer length %d exceeds pack", n)
	}
	buf := make([]byte, int64(n)+TrailerSize)
	if _, err := r.ReadAt(buf, start); err != nil {
		return nil, 0, err
	}
	entries, end, err := ParseFooter(buf)
	if err != nil {
		return nil, 0, err
	}
	if end != start {
		return nil, 0, formatErr("footer lists records up to %d, footer at %d", end, start)
	}
	return entries, start, nil
}
