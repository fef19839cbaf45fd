package pack

import (
	"errors"
	"fmt"
	"io"
)

// ScanFunc receives each record found by Scan with its offset and total length.
type ScanFunc func(off int64, rec Record, length int) error

// Scan walks the records of a pack from the header on, verifying each CRC.
// It stops at the footer or at the first record that is torn or fails its
// CRC, and returns the offset where valid records end: a crash can leave a
// torn tail, which is not an error here. Errors from r or fn are returned.
func Scan(r io.ReaderAt, size int64, fn ScanFunc) (int64, error) {
	off := int64(HeaderSize)
	var hdr [RecordHeaderSize]byte
	var buf []byte
	for off+RecordOverhead <= size {
		if _, err := r.ReadAt(hdr[:], off); err != nil {
			return off, fmt.Errorf("pack scan at %d: %w", off, err)
		}
		n, err := RecordLen(hdr[:])
		if err != nil || off+int64(n) > size {
			return off, nil
		}
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := r.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
			return off, fmt.Errorf("pack scan at %d: %w", off, err)
		}
		rec, _, err := ParseRecord(buf)
		if err != nil {
			return off, nil
		}
		if rec.Type == TypeFooter {
			return off, nil
		}
		if err := fn(off, rec, n); err != nil {
			return off, err
		}
		off += int64(n)
	}
	return off, nil
}
