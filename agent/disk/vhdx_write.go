package disk

import (
	"crypto/rand"
	"encoding/binary"
	"os"
	"unicode/utf16"
)

// vhdxWriter writes a dynamic VHDX: the 1 MiB header area, an empty
// 1 MiB log, a 1 MiB metadata region, the BAT, then 32 MiB payload
// blocks in the order the guest data arrives. Parts of a block that get
// no data stay holes in the file and read as zeros.
type vhdxWriter struct {
	f          *os.File
	size       int64
	blockSize  int64
	chunkRatio int64
	bat        []uint64
	batOff     int64
	batLen     int64
	next       int64 // file offset of the next payload block
}

const (
	vhdxWLogOff      = 1 << 20
	vhdxWLogLen      = 1 << 20
	vhdxWMetaOff     = 2 << 20
	vhdxWMetaLen     = 1 << 20
	vhdxWBATOff      = 3 << 20
	vhdxWBlockSize   = 32 << 20
	vhdxWSectorSize  = 512
	vhdxWPhysSector  = 4096
	vhdxMetaVirtDisk = 1 << 1
)

func newVHDXWriter(f *os.File, size int64) (*vhdxWriter, error) {
	size = roundSector(size)
	w := &vhdxWriter{f: f, size: size, blockSize: vhdxWBlockSize, batOff: vhdxWBATOff}
	w.chunkRatio = (int64(1) << 23) * vhdxWSectorSize / w.blockSize
	blocks := (size + w.blockSize - 1) / w.blockSize
	entries := blocks + (blocks-1)/w.chunkRatio
	w.bat = make([]uint64, entries)
	w.batLen = (entries*8 + vhdxMB - 1) &^ (vhdxMB - 1)
	w.next = w.batOff + w.batLen
	return w, nil
}

func (w *vhdxWriter) unit() int64 { return 64 << 10 }

func (w *vhdxWriter) write(off int64, p []byte) error {
	bi := off / w.blockSize
	idx := bi + bi/w.chunkRatio
	if w.bat[idx]&7 != vhdxBlockFullyPresent {
		w.bat[idx] = uint64(w.next) | vhdxBlockFullyPresent
		w.next += w.blockSize
	}
	_, err := w.f.WriteAt(p, vhdxFileOff(w.bat[idx])+off%w.blockSize)
	return err
}

func (w *vhdxWriter) finish() error {
	le := binary.LittleEndian
	// File type identifier.
	id := make([]byte, 64<<10)
	copy(id, vhdxSignature)
	for i, u := range utf16.Encode([]rune("Ferry")) {
		le.PutUint16(id[8+2*i:], u)
	}
	if _, err := w.f.WriteAt(id, 0); err != nil {
		return err
	}
	// Headers: two copies, the second current.
	var fileWrite, dataWrite guid
	if _, err := rand.Read(fileWrite[:]); err != nil {
		return err
	}
	if _, err := rand.Read(dataWrite[:]); err != nil {
		return err
	}
	for i, off := range []int64{vhdxHeaderOff1, vhdxHeaderOff2} {
		h := make([]byte, vhdxHeaderSize)
		copy(h, "head")
		le.PutUint64(h[8:], uint64(i+1))
		copy(h[16:], fileWrite[:])
		copy(h[32:], dataWrite[:])
		le.PutUint16(h[66:], 1) // version
		le.PutUint32(h[68:], vhdxWLogLen)
		le.PutUint64(h[72:], vhdxWLogOff)
		le.PutUint32(h[4:], vhdxChecksum(h))
		if _, err := w.f.WriteAt(h, off); err != nil {
			return err
		}
	}
	// Region tables.
	rt := make([]byte, vhdxRegionSize)
	copy(rt, "regi")
	le.PutUint32(rt[8:], 2)
	for i, r := range []vhdxRegion{{id: vhdxBATGUID, off: uint64(w.batOff), length: uint32(w.batLen)},
		{id: vhdxMetadataGUID, off: vhdxWMetaOff, length: vhdxWMetaLen}} {
		e := rt[16+32*i:]
		copy(e, r.id[:])
		le.PutUint64(e[16:], r.off)
		le.PutUint32(e[24:], r.length)
		le.PutUint32(e[28:], 1) // required
	}
	le.PutUint32(rt[4:], vhdxChecksum(rt))
	for _, off := range []int64{vhdxRegionOff1, vhdxRegionOff2} {
		if _, err := w.f.WriteAt(rt, off); err != nil {
			return err
		}
	}
	// Metadata: table at the region start, items from 64 KiB on.
	var diskID guid
	if _, err := rand.Read(diskID[:]); err != nil {
		return err
	}
	md := make([]byte, 64<<10+64)
	copy(md, "metadata")
	type item struct {
		id    guid
		data  []byte
		flags uint32
	}
	u32 := func(v uint32) []byte { b := make([]byte, 4); le.PutUint32(b, v); return b }
	u64 := func(v uint64) []byte { b := make([]byte, 8); le.PutUint64(b, v); return b }
	params := make([]byte, 8)
	le.PutUint32(params, uint32(w.blockSize))
	items := []item{
		{vhdxFileParamsGUID, params, vhdxMetaIsRequired},
		{vhdxVirtualSizeGUID, u64(uint64(w.size)), vhdxMetaIsRequired | vhdxMetaVirtDisk},
		{vhdxDiskIDGUID, diskID[:], vhdxMetaIsRequired | vhdxMetaVirtDisk},
		{vhdxLogicalSecGUID, u32(vhdxWSectorSize), vhdxMetaIsRequired | vhdxMetaVirtDisk},
		{vhdxPhysicalSecGUID, u32(vhdxWPhysSector), vhdxMetaIsRequired | vhdxMetaVirtDisk},
	}
	le.PutUint16(md[10:], uint16(len(items)))
	at := 64 << 10
	for i, it := range items {
		e := md[32+32*i:]
		copy(e, it.id[:])
		le.PutUint32(e[16:], uint32(at))
		le.PutUint32(e[20:], uint32(len(it.data)))
		le.PutUint32(e[24:], it.flags)
		copy(md[at:], it.data)
		at += len(it.data)
	}
	if _, err := w.f.WriteAt(md, vhdxWMetaOff); err != nil {
		return err
	}
	bat := make([]byte, len(w.bat)*8)
	for i, e := range w.bat {
		le.PutUint64(bat[i*8:], e)
	}
	if _, err := w.f.WriteAt(bat, w.batOff); err != nil {
		return err
	}
	// Every region and block lies wholly inside the file.
	return w.f.Truncate(w.next)
}
