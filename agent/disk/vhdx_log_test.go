package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// logOp is one descriptor of a test log entry: a 4 KiB data write, or
// zeros when data is nil.
type logOp struct {
	off  int64
	data []byte // 4096 bytes, or nil for a zero descriptor of n bytes
	n    int64
}

// buildLogEntry lays out one VHDX log entry ([MS-VHDX] 2.3.1) for tests.
func buildLogEntry(seq uint64, tail uint32, id guid, flushed, last uint64, ops []logOp) []byte {
	le := binary.LittleEndian
	descBytes := (vhdxLogEntryHeader + len(ops)*vhdxLogDescriptor + vhdxLogSector - 1) &^ (vhdxLogSector - 1)
	var dataOps int
	for _, op := range ops {
		if op.data != nil {
			dataOps++
		}
	}
	e := make([]byte, descBytes+dataOps*vhdxLogSector)
	copy(e, "loge")
	le.PutUint32(e[8:], uint32(len(e)))
	le.PutUint32(e[12:], tail)
	le.PutUint64(e[16:], seq)
	le.PutUint32(e[24:], uint32(len(ops)))
	copy(e[32:48], id[:])
	le.PutUint64(e[48:], flushed)
	le.PutUint64(e[56:], last)
	sector := descBytes
	for i, op := range ops {
		d := e[vhdxLogEntryHeader+i*vhdxLogDescriptor:]
		le.PutUint64(d[16:], uint64(op.off))
		le.PutUint64(d[24:], seq)
		if op.data == nil {
			copy(d, "zero")
			le.PutUint64(d[8:], uint64(op.n))
			continue
		}
		copy(d, "desc")
		copy(d[4:8], op.data[4092:])
		copy(d[8:16], op.data[:8])
		s := e[sector : sector+vhdxLogSector]
		copy(s, "data")
		le.PutUint32(s[4:], uint32(seq>>32))
		copy(s[8:4092], op.data[8:4092])
		le.PutUint32(s[4092:], uint32(seq))
		sector += vhdxLogSector
	}
	le.PutUint32(e[4:], vhdxChecksum(e))
	return e
}

// vhdxLayout is what a test needs to know to patch a VHDX file.
type vhdxLayout struct {
	hdrOff     int64 // the current header
	h          *vhdxHeader
	batOff     int64
	blockSize  int64
	chunkRatio int64
	bat        []uint64
}

func readVHDXLayout(t *testing.T, b []byte) vhdxLayout {
	t.Helper()
	h1, err1 := parseVHDXHeader(b[vhdxHeaderOff1:])
	h2, err2 := parseVHDXHeader(b[vhdxHeaderOff2:])
	require.False(t, err1 != nil && err2 != nil)
	l := vhdxLayout{hdrOff: vhdxHeaderOff1, h: h1}
	if err1 != nil || (err2 == nil && h2.seq > h1.seq) {
		l.hdrOff, l.h = vhdxHeaderOff2, h2
	}
	regions, err := parseVHDXRegionTable(b[vhdxRegionOff1:])
	require.NoError(t, err)
	for _, r := range regions {
		switch r.id {
		case vhdxBATGUID:
			l.batOff = int64(r.off)
		case vhdxMetadataGUID:
			md, err := parseVHDXMetadata(b[r.off : r.off+uint64(r.length)])
			require.NoError(t, err)
			l.blockSize = int64(md.blockSize)
			l.chunkRatio = (int64(1) << 23) * int64(md.logicalSector) / l.blockSize
		}
	}
	for i := int64(0); i < 4096; i++ {
		l.bat = append(l.bat, binary.LittleEndian.Uint64(b[l.batOff+8*i:]))
	}
	return l
}

func (l vhdxLayout) batIndex(block int64) int64 { return block + block/l.chunkRatio }

// setLogGUID marks the current header as having a log to replay.
func setLogGUID(b []byte, hdrOff int64, id guid) {
	copy(b[hdrOff+48:hdrOff+64], id[:])
	binary.LittleEndian.PutUint32(b[hdrOff+4:], vhdxChecksum(b[hdrOff:hdrOff+vhdxHeaderSize]))
}

func fileSHA(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return sha256.Sum256(b)
}

// makeDirtyVHDX writes a VHDX whose log holds writes that are not yet in
// place: a BAT sector that zeroes one block and adds another beyond the
// end of the file, a data sector inside an allocated block, a zeroed
// range, over two entries; plus a stale entry of an older sequence.
func makeDirtyVHDX(t *testing.T, q qemuTools, dir string) (dirty string, l vhdxLayout) {
	t.Helper()
	base := baseImage(t, dir)
	clean := filepath.Join(dir, "clean.vhdx")
	q.convert(t, base, "raw", clean, "vhdx", "-o", "block_size=1M")
	b, err := os.ReadFile(clean)
	require.NoError(t, err)
	l = readVHDXLayout(t, b)
	require.True(t, l.h.logGUID.isZero(), "qemu-img left a log to replay")

	var present []int64
	var absent int64 = -1
	for blk := int64(0); blk*l.blockSize < oddSize; blk++ {
		switch l.bat[l.batIndex(blk)] & 7 {
		case vhdxBlockFullyPresent:
			present = append(present, blk)
		case vhdxBlockNotPresent, vhdxBlockZero:
			if absent < 0 {
				absent = blk
			}
		}
	}
	require.GreaterOrEqual(t, len(present), 3)
	require.GreaterOrEqual(t, absent, int64(0))

	fileEnd := int64(len(b))
	newBlockOff := (fileEnd + vhdxMB - 1) &^ (vhdxMB - 1)
	// One BAT sector, edited: block present[0] becomes ZERO, block absent
	// becomes present at newBlockOff (beyond the current end of file).
	sectorOf := func(idx int64) int64 { return (l.batOff + idx*8) &^ (vhdxLogSector - 1) }
	batSector := make([]byte, vhdxLogSector)
	s0 := sectorOf(l.batIndex(present[0]))
	copy(batSector, b[s0:s0+vhdxLogSector])
	binary.LittleEndian.PutUint64(batSector[l.batOff+l.batIndex(present[0])*8-s0:], vhdxBlockZero)
	var batSector2 []byte
	s1 := sectorOf(l.batIndex(absent))
	newEntry := uint64(newBlockOff>>20)<<20 | vhdxBlockFullyPresent
	if s1 == s0 {
		binary.LittleEndian.PutUint64(batSector[l.batOff+l.batIndex(absent)*8-s0:], newEntry)
	} else {
		batSector2 = make([]byte, vhdxLogSector)
		copy(batSector2, b[s1:s1+vhdxLogSector])
		binary.LittleEndian.PutUint64(batSector2[l.batOff+l.batIndex(absent)*8-s1:], newEntry)
	}
	// Non-periodic sectors, so that a mix-up of leading, payload and
	// trailing bytes shows.
	pattern := func(c byte) []byte {
		rng := rand.New(rand.NewPCG(uint64(c), 1))
		p := make([]byte, vhdxLogSector)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		return p
	}
	dataBlock := vhdxFileOff(l.bat[l.batIndex(present[1])])
	zeroBlock := vhdxFileOff(l.bat[l.batIndex(present[2])])

	id := mustGUID("11111111-2222-3333-4444-555555555555")
	newEnd := uint64(newBlockOff + l.blockSize)
	entry1 := buildLogEntry(100, 0, id, uint64(fileEnd), uint64(fileEnd), []logOp{
		{off: dataBlock + 8*vhdxLogSector, data: pattern(0xC1)},
		{off: zeroBlock + 4*vhdxLogSector, n: 3 * vhdxLogSector},
	})
	ops2 := []logOp{{off: s0, data: batSector}, {off: newBlockOff + 2*vhdxLogSector, data: pattern(0xD2)},
		{off: dataBlock + 8*vhdxLogSector, data: pattern(0xE3)}, // overrides entry 1's write
		// The new block's last sector: qemu's replay extends the file only
		// as far as the logged writes reach, and checks blocks against it.
		{off: newBlockOff + l.blockSize - vhdxLogSector, data: pattern(0xF4)}}
	if batSector2 != nil {
		ops2 = append(ops2, logOp{off: s1, data: batSector2})
	}
	entry2 := buildLogEntry(101, 0, id, uint64(fileEnd), newEnd, ops2)
	// A stale entry from an older sequence, later in the log: valid on its
	// own but not part of the active sequence (its tail points at itself).
	staleAt := int64(len(entry1) + len(entry2) + 16*vhdxLogSector)
	stale := buildLogEntry(7, uint32(staleAt), id, uint64(fileEnd), uint64(fileEnd), []logOp{
		{off: dataBlock, data: pattern(0x99)},
	})
	logOff := int64(l.h.logOffset)
	copy(b[logOff:], entry1)
	copy(b[logOff+int64(len(entry1)):], entry2)
	copy(b[logOff+staleAt:], stale)
	setLogGUID(b, l.hdrOff, id)
	dirty = filepath.Join(dir, "dirty.vhdx")
	require.NoError(t, os.WriteFile(dirty, b, 0o644))
	return dirty, l
}

// TestVHDXLogReplay: a VHDX with a non-empty log reads as qemu reads it
// after qemu replayed the log, and the file is never modified.
func TestVHDXLogReplay(t *testing.T) {
	q := needQemu(t)
	dir := t.TempDir()
	dirty, _ := makeDirtyVHDX(t, q, dir)
	before := fileSHA(t, dirty)

	src, err := Open(dirty, OpenOptions{})
	require.NoError(t, err)
	defer src.Close()
	require.Equal(t, before, fileSHA(t, dirty), "opening must not modify the image")

	// The oracle: qemu replays the log when it opens a copy read-write.
	replayed := filepath.Join(dir, "replayed.vhdx")
	run(t, "cp", dirty, replayed)
	run(t, q.io, "-f", "vhdx", "-c", "read 0 512", replayed)
	b, err := os.ReadFile(replayed)
	require.NoError(t, err)
	require.True(t, readVHDXLayout(t, b).h.logGUID.isZero(), "qemu did not replay the log")
	compareWithFile(t, src, q.toRaw(t, replayed, "vhdx"))
	ext, err := src.Extents(context.Background())
	require.NoError(t, err)
	checkExtentShape(t, ext, src.Size())
	require.Equal(t, before, fileSHA(t, dirty), "reading must not modify the image")
}

// TestVHDXUnreplayableLog: a log GUID with no valid entry (a torn write,
// a flipped bit) is refused with ErrDirty and a reason naming the log.
func TestVHDXUnreplayableLog(t *testing.T) {
	q := needQemu(t)
	dir := t.TempDir()
	dirty, l := makeDirtyVHDX(t, q, dir)
	b, err := os.ReadFile(dirty)
	require.NoError(t, err)
	// Damage the head entry: the active sequence is broken and the stale
	// entry alone is an older sequence whose data still replays...
	// so damage every entry's checksum.
	logOff := int64(l.h.logOffset)
	for pos := logOff; pos < logOff+int64(l.h.logLength); pos += vhdxLogSector {
		if string(b[pos:pos+4]) == "loge" {
			b[pos+100] ^= 0xff
		}
	}
	bad := filepath.Join(dir, "bad-log.vhdx")
	require.NoError(t, os.WriteFile(bad, b, 0o644))
	_, err = Open(bad, OpenOptions{})
	require.ErrorIs(t, err, ErrDirty)
	var fe *FormatError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, FormatVHDX, fe.Format)
	require.Contains(t, fe.Reason, "log replay impossible")
	require.True(t, fe.Retryable())
	t.Log(err)

	// A truncated file the log says was longer is refused too.
	trunc := filepath.Join(dir, "trunc.vhdx")
	orig, err := os.ReadFile(dirty)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(trunc, orig[:len(orig)-vhdxMB], 0o644))
	_, err = Open(trunc, OpenOptions{})
	require.ErrorIs(t, err, ErrDirty)
	t.Log(err)

	// For diagnostics AllowDirty reads the file as it stands.
	src, err := Open(bad, OpenOptions{AllowDirty: true})
	require.NoError(t, err)
	src.Close()
}

// TestVHDXLogGUIDWithoutEntries: a LogGuid set over a log holding no entry
// of it (a writer killed between setting the header and writing its first
// entry) is an empty log: the file reads as it stands, like qemu reads it.
func TestVHDXLogGUIDWithoutEntries(t *testing.T) {
	q := needQemu(t)
	dir := t.TempDir()
	base := baseImage(t, dir)
	clean := filepath.Join(dir, "clean.vhdx")
	q.convert(t, base, "raw", clean, "vhdx", "-o", "block_size=1M")
	b, err := os.ReadFile(clean)
	require.NoError(t, err)
	l := readVHDXLayout(t, b)
	setLogGUID(b, l.hdrOff, mustGUID("99999999-2222-3333-4444-555555555555"))
	begun := filepath.Join(dir, "begun.vhdx")
	require.NoError(t, os.WriteFile(begun, b, 0o644))

	want, err := Open(clean, OpenOptions{})
	require.NoError(t, err)
	defer want.Close()
	got, err := Open(begun, OpenOptions{})
	require.NoError(t, err, "a log GUID with no entry of it is an empty log")
	defer got.Close()
	require.Equal(t, want.Size(), got.Size())
	wb, gb := make([]byte, want.Size()), make([]byte, got.Size())
	_, err = want.ReadAt(wb, 0)
	require.NoError(t, err)
	_, err = got.ReadAt(gb, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(wb, gb), "the file reads as it stands")
}
