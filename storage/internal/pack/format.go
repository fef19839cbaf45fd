package pack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Version is the pack format version written into every header. Packs of a
// newer version are refused by the repository's format check.
const Version = 1

// Sizes and limits of the format (docs/storage-format.md "Limits").
const (
	HeaderSize       = 48
	RecordHeaderSize = 8
	RecordTrailer    = 4 // crc32c
	RecordOverhead   = RecordHeaderSize + RecordTrailer
	TrailerSize      = 12 // footer record length u32 + trailer magic
	// MaxPayload bounds one record so a corrupt length cannot make a reader
	// allocate without limit. Chunks are at most 1 MiB of plaintext plus
	// codec and AEAD overhead; point records are split well below this.
	MaxPayload = 64 << 20
	MaxString  = 4096
)

var (
	headerMagic  = [8]byte{'F', 'E', 'R', 'R', 'Y', 'P', 'A', 'K'}
	trailerMagic = [8]byte{'F', 'E', 'R', 'R', 'Y', 'E', 'N', 'D'}
	castagnoli   = crc32.MakeTable(crc32.Castagnoli)
)

// Record types. The list is append-only.
const (
	TypeChunk        uint8 = 1
	TypeKey          uint8 = 2
	TypePointChanges uint8 = 3
	TypePointCommit  uint8 = 4
	TypePointDelete  uint8 = 5
	TypePointLabel   uint8 = 6
	TypeFooter       uint8 = 0x7f
)

// ErrFormat is wrapped by every decoding error: the bytes are not a valid
// record, header or footer (torn, corrupt, or not a pack).
var ErrFormat = errors.New("pack: malformed")

// ErrTruncated is wrapped when the bytes end before the record does (a torn
// tail after a crash, or a short buffer).
var ErrTruncated = errors.New("pack: truncated")

func formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrFormat}, args...)...)
}

// CRC returns the CRC-32C (Castagnoli) of b, the checksum used throughout.
func CRC(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Header starts every pack file.
type Header struct {
	Version uint32
	PackID  uint64
	RepoID  [16]byte
}

// AppendHeader appends the 48-byte header.
func AppendHeader(dst []byte, h Header) []byte {
	start := len(dst)
	dst = append(dst, headerMagic[:]...)
	dst = binary.LittleEndian.AppendUint32(dst, h.Version)
	dst = binary.LittleEndian.AppendUint32(dst, 0)
	dst = binary.LittleEndian.AppendUint64(dst, h.PackID)
	dst = append(dst, h.RepoID[:]...)
	dst = binary.LittleEndian.AppendUint32(dst, CRC(dst[start:]))
	dst = binary.LittleEndian.AppendUint32(dst, 0)
	return dst
}

// ParseHeader decodes a header. The version is returned as found; the caller
// decides whether it can read it.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("%w: header needs %d bytes, have %d", ErrTruncated, HeaderSize, len(b))
	}
	if [8]byte(b[:8]) != headerMagic {
		return h, formatErr("bad header magic %q", b[:8])
	}
	if got, want := binary.LittleEndian.Uint32(b[40:]), CRC(b[:40]); got != want {
		return h, formatErr("header crc %08x, want %08x", got, want)
	}
	h.Version = binary.LittleEndian.Uint32(b[8:])
	h.PackID = binary.LittleEndian.Uint64(b[16:])
	copy(h.RepoID[:], b[24:40])
	return h, nil
}

// AppendRecord frames payload as one record and appends it to dst.
func AppendRecord(dst []byte, typ, flags uint8, payload []byte) []byte {
	start := len(dst)
	dst = append(dst, typ, flags, 0, 0)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	dst = append(dst, payload...)
	return binary.LittleEndian.AppendUint32(dst, CRC(dst[start:]))
}

// Record is one decoded record frame. Payload aliases the input.
type Record struct {
	Type    uint8
	Flags   uint8
	Payload []byte
}

// RecordLen reads the total length of the record starting at b from its
// 8-byte header, without checking the CRC.
func RecordLen(hdr []byte) (int, error) {
	if len(hdr) < RecordHeaderSize {
		return 0, fmt.Errorf("%w: record header", ErrTruncated)
	}
	if hdr[2] != 0 || hdr[3] != 0 {
		return 0, formatErr("record reserved bytes %02x%02x", hdr[2], hdr[3])
	}
	n := binary.LittleEndian.Uint32(hdr[4:])
	if n > MaxPayload {
		return 0, formatErr("record payload length %d over limit %d", n, MaxPayload)
	}
	return RecordOverhead + int(n), nil
}

// ParseRecord decodes the record at the start of b, checking its CRC, and
// returns it with its total length.
func ParseRecord(b []byte) (Record, int, error) {
	n, err := RecordLen(b)
	if err != nil {
		return Record{}, 0, err
	}
	if len(b) < n {
		return Record{}, 0, fmt.Errorf("%w: record needs %d bytes, have %d", ErrTruncated, n, len(b))
	}
	body := b[:n-RecordTrailer]
	if got, want := binary.LittleEndian.Uint32(b[n-RecordTrailer:]), CRC(body); got != want {
		return Record{}, 0, formatErr("record crc %08x, want %08x", got, want)
	}
	return Record{Type: b[0], Flags: b[1], Payload: b[RecordHeaderSize : n-RecordTrailer]}, n, nil
}
