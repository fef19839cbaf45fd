package pack

import (
	"bytes"
	"testing"
)

func seedRecords() [][]byte {
	var out [][]byte
	out = append(out, AppendRecord(nil, TypeChunk, 0, EncodeChunk(Chunk{Hash: [32]byte{1}, Codec: 1, PlainLen: 5, Data: []byte("hello")})))
	out = append(out, AppendRecord(nil, TypeKey, 0, EncodeKey(SealedKey{Slot: 3})))
	out = append(out, AppendRecord(nil, TypePointChanges, 0, EncodeChanges(Changes{PointID: 7, Machine: "m",
		Disks: []DiskChanges{{Disk: "d", Changes: []Change{{Block: 1, Zero: true}, {Block: 9, Hash: [32]byte{2}}}}}})))
	out = append(out, AppendRecord(nil, TypePointCommit, 0, EncodeCommit(Commit{PointID: 7, Machine: "m", Parts: 1,
		Disks: []DiskSpec{{Name: "d", Size: 4096, BlockSize: 4096}}})))
	out = append(out, AppendRecord(nil, TypePointDelete, DeleteMachineFlag, EncodeDelete(Delete{PointID: 7, Machine: "m"})))
	out = append(out, AppendRecord(nil, TypePointLabel, 0, EncodeLabel(Label{PointID: 7, Serial: 2, Name: "x"})))
	return out
}

// FuzzParseRecord: any bytes either fail to parse or decode to a record
// whose payload decoder does not panic and re-encodes to the same frame.
func FuzzParseRecord(f *testing.F) {
	for _, s := range seedRecords() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, n, err := ParseRecord(b)
		if err != nil {
			return
		}
		if n > len(b) || n != RecordOverhead+len(rec.Payload) {
			t.Fatalf("length %d for %d input bytes", n, len(b))
		}
		if !bytes.Equal(AppendRecord(nil, rec.Type, rec.Flags, rec.Payload), b[:n]) {
			t.Fatal("record does not re-encode to its bytes")
		}
		switch rec.Type {
		case TypeChunk:
			if c, err := DecodeChunk(rec.Payload); err == nil && !bytes.Equal(EncodeChunk(c), rec.Payload) {
				t.Fatal("chunk round trip")
			}
		case TypeKey:
			if k, err := DecodeKey(rec.Payload); err == nil && !bytes.Equal(EncodeKey(k), rec.Payload) {
				t.Fatal("key round trip")
			}
		case TypePointChanges:
			if c, err := DecodeChanges(rec.Payload); err == nil && !bytes.Equal(EncodeChanges(c), rec.Payload) {
				t.Fatal("changes round trip")
			}
		case TypePointCommit:
			if c, err := DecodeCommit(rec.Payload); err == nil && !bytes.Equal(EncodeCommit(c), rec.Payload) {
				t.Fatal("commit round trip")
			}
		case TypePointDelete:
			DecodeDelete(rec.Payload)
		case TypePointLabel:
			DecodeLabel(rec.Payload)
		}
	})
}

// FuzzParseFooter: footers either fail or list in-order records that fit.
func FuzzParseFooter(f *testing.F) {
	hdr := AppendHeader(nil, Header{Version: Version, PackID: 1})
	body := append([]byte(nil), hdr...)
	var entries []Entry
	for _, r := range seedRecords()[:3] {
		entries = append(entries, Entry{Type: r[0], Offset: int64(len(body)), Length: int64(len(r))})
		body = append(body, r...)
	}
	f.Add(AppendFooter(nil, entries))
	f.Add(AppendFooter(nil, nil))
	f.Add([]byte("FERRYEND"))
	f.Fuzz(func(t *testing.T, b []byte) {
		es, end, err := ParseFooter(b)
		if err != nil {
			return
		}
		next := int64(HeaderSize)
		for _, e := range es {
			if e.Offset != next || e.Length < RecordOverhead {
				t.Fatalf("entry %+v out of order", e)
			}
			next += e.Length
		}
		if end != next {
			t.Fatalf("end %d, entries end at %d", end, next)
		}
	})
}

// FuzzScan: scanning arbitrary bytes after a valid header never panics and
// stops within the input.
func FuzzScan(f *testing.F) {
	hdr := AppendHeader(nil, Header{Version: Version, PackID: 1})
	for _, r := range seedRecords() {
		f.Add(append(append([]byte(nil), hdr...), r...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		end, err := Scan(bytes.NewReader(b), int64(len(b)), func(off int64, rec Record, n int) error { return nil })
		if err == nil && end > int64(max(len(b), HeaderSize)) {
			t.Fatalf("scan ended at %d past %d bytes", end, len(b))
		}
	})
}
