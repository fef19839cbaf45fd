package data

import "encoding/binary"

// reader walks a payload; the first short read sets err and every later
// call returns zero values, so decoders check once at the end of a step.
type reader struct {
	b     []byte
	frame string
	err   error
}

func (r *reader) need(n int) bool {
	if r.err != nil {
		return false
	}
	if len(r.b) < n {
		r.err = invalid(r.frame, "truncated: need %d more bytes, have %d", n, len(r.b))
		return false
	}
	return true
}

func (r *reader) u8() uint8 {
	if !r.need(1) {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) u16() uint16 {
	if !r.need(2) {
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *reader) u32() uint32 {
	if !r.need(4) {
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *reader) u64() uint64 {
	if !r.need(8) {
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *reader) hash() (h Hash) {
	if !r.need(32) {
		return h
	}
	copy(h[:], r.b)
	r.b = r.b[32:]
	return h
}

// bytes returns the next n bytes without copying.
func (r *reader) bytes(n int) []byte {
	if !r.need(n) {
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// end reports the first error, or trailing bytes.
func (r *reader) end() error {
	if r.err != nil {
		return r.err
	}
	if len(r.b) != 0 {
		return invalid(r.frame, "%d trailing bytes", len(r.b))
	}
	return nil
}

func appendU16(b []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(b, v) }
func appendU32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func appendU64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

// bitmapLen is the bytes of a bitmap of n bits.
func bitmapLen(n int) int { return (n + 7) / 8 }

// appendBitmap appends bits LSB-first: bit i is byte i/8, bit i%8.
func appendBitmap(b []byte, bits []bool) []byte {
	start := len(b)
	b = append(b, make([]byte, bitmapLen(len(bits)))...)
	for i, v := range bits {
		if v {
			b[start+i/8] |= 1 << (i % 8)
		}
	}
	return b
}

// readBitmap decodes n bits into dst (reusing its storage); unused bits of
// the last byte must be zero.
func (r *reader) bitmap(dst []bool, n int) []bool {
	raw := r.bytes(bitmapLen(n))
	if raw == nil && n > 0 {
		return dst[:0]
	}
	if n%8 != 0 && raw[len(raw)-1]>>(n%8) != 0 {
		r.err = invalid(r.frame, "bitmap has bits set past entry %d", n)
		return dst[:0]
	}
	if cap(dst) < n {
		dst = make([]bool, n)
	}
	dst = dst[:n]
	for i := range dst {
		dst[i] = raw[i/8]&(1<<(i%8)) != 0
	}
	return dst
}
