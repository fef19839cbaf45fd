package admin

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// SparseContentType labels the export stream: only non-zero ranges travel.
//
// Layout (little endian): a sequence of records, each a tag byte then
//
//	'D' offset u64, length u32, length bytes   — data at offset
//	'E' size u64                               — end: the disk is size bytes
//
// A stream without its 'E' record was cut short and must not be trusted.
const SparseContentType = "application/x-ferry-sparse"

// maxSparseRecord bounds one data record.
const maxSparseRecord = 16 << 20

// ErrTruncatedExport is returned when a sparse stream ends before its end record.
var ErrTruncatedExport = errors.New("export stream ended early: the export is incomplete")

// SparseWriter encodes a sparse stream.
type SparseWriter struct {
	w *bufio.Writer
}

// NewSparseWriter starts a stream on w.
func NewSparseWriter(w io.Writer) *SparseWriter {
	return &SparseWriter{w: bufio.NewWriterSize(w, 1<<20)}
}

// WriteAt sends data for offset.
func (s *SparseWriter) WriteAt(p []byte, off int64) (int, error) {
	total := len(p)
	for len(p) > 0 {
		n := min(len(p), maxSparseRecord)
		var hdr [13]byte
		hdr[0] = 'D'
		binary.LittleEndian.PutUint64(hdr[1:], uint64(off))
		binary.LittleEndian.PutUint32(hdr[9:], uint32(n))
		if _, err := s.w.Write(hdr[:]); err != nil {
			return 0, err
		}
		if _, err := s.w.Write(p[:n]); err != nil {
			return 0, err
		}
		p, off = p[n:], off+int64(n)
	}
	return total, nil
}

// Close writes the end record and flushes.
func (s *SparseWriter) Close(size int64) error {
	var hdr [9]byte
	hdr[0] = 'E'
	binary.LittleEndian.PutUint64(hdr[1:], uint64(size))
	if _, err := s.w.Write(hdr[:]); err != nil {
		return err
	}
	return s.w.Flush()
}

// SparseTarget is where a decoded stream lands (an *os.File).
type SparseTarget interface {
	io.WriterAt
	Truncate(size int64) error
}

// ReadSparse applies a sparse stream to dst: data records are written at
// their offsets, the file is truncated to the final size (so unwritten
// ranges stay holes). It returns the disk size.
func ReadSparse(r io.Reader, dst SparseTarget) (int64, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	buf := make([]byte, 0, 1<<20)
	for {
		tag, err := br.ReadByte()
		if errors.Is(err, io.EOF) {
			return 0, ErrTruncatedExport
		}
		if err != nil {
			return 0, err
		}
		switch tag {
		case 'D':
			var hdr [12]byte
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return 0, ErrTruncatedExport
			}
			off := int64(binary.LittleEndian.Uint64(hdr[:]))
			n := int(binary.LittleEndian.Uint32(hdr[8:]))
			if n > maxSparseRecord || off < 0 {
				return 0, fmt.Errorf("export stream: record of %d bytes at %d is out of bounds", n, off)
			}
			if cap(buf) < n {
				buf = make([]byte, n)
			}
			buf = buf[:n]
			if _, err := io.ReadFull(br, buf); err != nil {
				return 0, ErrTruncatedExport
			}
			if _, err := dst.WriteAt(buf, off); err != nil {
				return 0, err
			}
		case 'E':
			var hdr [8]byte
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return 0, ErrTruncatedExport
			}
			size := int64(binary.LittleEndian.Uint64(hdr[:]))
			if size < 0 {
				return 0, fmt.Errorf("export stream: bad size")
			}
			return size, dst.Truncate(size)
		default:
			return 0, fmt.Errorf("export stream: unknown record tag 0x%02x", tag)
		}
	}
}
