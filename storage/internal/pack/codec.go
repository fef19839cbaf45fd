package pack

import "encoding/binary"

// enc is a little-endian appender for payloads.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.LittleEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) raw(v []byte) { e.b = append(e.b, v...) }
func (e *enc) str(s string) {
	if len(s) > MaxString {
		s = s[:MaxString] // callers validate; never emit an unreadable record
	}
	e.u16(uint16(len(s)))
	e.b = append(e.b, s...)
}

// dec is a bounds-checked little-endian reader; the first failure sticks.
type dec struct {
	b   []byte
	err error
}

func (d *dec) need(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.err = formatErr("payload short: need %d bytes, have %d", n, len(d.b))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) u8() uint8 {
	if v := d.need(1); v != nil {
		return v[0]
	}
	return 0
}
func (d *dec) u16() uint16 {
	if v := d.need(2); v != nil {
		return binary.LittleEndian.Uint16(v)
	}
	return 0
}
func (d *dec) u32() uint32 {
	if v := d.need(4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}
func (d *dec) u64() uint64 {
	if v := d.need(8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}
func (d *dec) i64() int64 { return int64(d.u64()) }
func (d *dec) str() string {
	n := int(d.u16())
	if n > MaxString && d.err == nil {
		d.err = formatErr("string length %d over limit %d", n, MaxString)
		return ""
	}
	return string(d.need(n))
}
func (d *dec) hash() (h [32]byte) {
	if v := d.need(32); v != nil {
		copy(h[:], v)
	}
	return h
}
func (d *dec) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = formatErr("%d trailing payload bytes", len(d.b))
	}
	return d.err
}
