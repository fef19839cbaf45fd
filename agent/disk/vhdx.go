package disk

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"unicode/utf16"
)

// VHDX layout, from [MS-VHDX] v20240423. All fields are little-endian.
const (
	vhdxHeaderOff1   = 64 << 10
	vhdxHeaderOff2   = 128 << 10
	vhdxHeaderSize   = 4 << 10
	vhdxRegionOff1   = 192 << 10
	vhdxRegionOff2   = 256 << 10
	vhdxRegionSize   = 64 << 10
	vhdxHeaderArea   = 1 << 20
	vhdxMB           = 1 << 20
	vhdxMaxRegionLen = 256 << 20 // BAT for 64 TiB at 1 MiB blocks is 512 MiB... see vhdxMaxBAT
	vhdxMaxBAT       = 1 << 30
	vhdxMaxMetadata  = 16 << 20
	vhdxMaxLog       = 256 << 20
	vhdxMaxSize      = 64 << 40 // the specification's limit

	vhdxMetaIsRequired = 1 << 2

	vhdxBlockNotPresent       = 0
	vhdxBlockUndefined        = 1
	vhdxBlockZero             = 2
	vhdxBlockUnmapped         = 3
	vhdxBlockFullyPresent     = 6
	vhdxBlockPartiallyPresent = 7
	vhdxSBBlockNotPresent     = 0
	vhdxSBBlockPresent        = 6

	vhdxSectorBitmapSize = 1 << 20
)

var (
	vhdxBATGUID          = mustGUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
	vhdxMetadataGUID     = mustGUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
	vhdxFileParamsGUID   = mustGUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
	vhdxVirtualSizeGUID  = mustGUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
	vhdxDiskIDGUID       = mustGUID("BECA12AB-B2E6-4523-93EF-C309E000C746")
	vhdxLogicalSecGUID   = mustGUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
	vhdxPhysicalSecGUID  = mustGUID("CDA348C7-445D-4471-9CC9-E9885251C556")
	vhdxParentLocGUID    = mustGUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
	vhdxParentLocTypeVHD = mustGUID("B04AEFB7-D19E-4A81-B789-25B8E9445913")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// vhdxChecksum is CRC-32C over b with the 4-byte checksum field at 4
// taken as zero.
func vhdxChecksum(b []byte) uint32 {
	var zero [4]byte
	c := crc32.Update(0, castagnoli, b[:4])
	c = crc32.Update(c, castagnoli, zero[:])
	return crc32.Update(c, castagnoli, b[8:])
}

// vhdxHeader is one of the two headers.
type vhdxHeader struct {
	seq        uint64
	fileWrite  guid
	dataWrite  guid
	logGUID    guid
	logVersion uint16
	version    uint16
	logLength  uint32
	logOffset  uint64
}

func parseVHDXHeader(b []byte) (*vhdxHeader, error) {
	le := binary.LittleEndian
	if len(b) < vhdxHeaderSize {
		return nil, fmt.Errorf("header truncated")
	}
	b = b[:vhdxHeaderSize]
	if string(b[:4]) != "head" {
		return nil, fmt.Errorf("bad header signature")
	}
	if le.Uint32(b[4:]) != vhdxChecksum(b) {
		return nil, fmt.Errorf("header checksum mismatch")
	}
	h := &vhdxHeader{seq: le.Uint64(b[8:]), logVersion: le.Uint16(b[64:]), version: le.Uint16(b[66:]),
		logLength: le.Uint32(b[68:]), logOffset: le.Uint64(b[72:])}
	copy(h.fileWrite[:], b[16:32])
	copy(h.dataWrite[:], b[32:48])
	copy(h.logGUID[:], b[48:64])
	return h, nil
}

// vhdxRegion is a region table entry.
type vhdxRegion struct {
	id       guid
	off      uint64
	length   uint32
	required bool
}

func parseVHDXRegionTable(b []byte) ([]vhdxRegion, error) {
	le := binary.LittleEndian
	if len(b) < vhdxRegionSize {
		return nil, fmt.Errorf("region table truncated")
	}
	b = b[:vhdxRegionSize]
	if string(b[:4]) != "regi" {
		return nil, fmt.Errorf("bad region table signature")
	}
	if le.Uint32(b[4:]) != vhdxChecksum(b) {
		return nil, fmt.Errorf("region table checksum mismatch")
	}
	n := le.Uint32(b[8:])
	if n > 2047 {
		return nil, fmt.Errorf("region table has %d entries (at most 2047)", n)
	}
	out := make([]vhdxRegion, n)
	for i := range out {
		e := b[16+32*i:]
		copy(out[i].id[:], e[:16])
		out[i].off, out[i].length, out[i].required = le.Uint64(e[16:]), le.Uint32(e[24:]), le.Uint32(e[28:])&1 != 0
	}
	return out, nil
}

// vhdxMeta is the metadata region's content.
type vhdxMeta struct {
	blockSize      uint32
	hasParent      bool
	virtualSize    uint64
	logicalSector  uint32
	physicalSector uint32
	diskID         guid
	parent         map[string]string // parent locator keys and values
}

// vhdxMetaErr tells a reason and whether it is corruption or an unsupported feature.
type vhdxMetaErr struct {
	unsupported bool
	reason      string
}

func (e *vhdxMetaErr) Error() string { return e.reason }

func metaBad(format string, args ...any) error {
	return &vhdxMetaErr{reason: fmt.Sprintf(format, args...)}
}

func parseVHDXMetadata(b []byte) (*vhdxMeta, error) {
	le := binary.LittleEndian
	if len(b) < 32 || string(b[:8]) != "metadata" {
		return nil, metaBad("bad metadata table signature")
	}
	n := int(le.Uint16(b[10:]))
	if n > 2047 || 32+32*n > len(b) || 32+32*n > 64<<10 {
		return nil, metaBad("metadata table has %d entries", n)
	}
	m := &vhdxMeta{}
	seen := map[guid]bool{}
	for i := 0; i < n; i++ {
		e := b[32+32*i:]
		var id guid
		copy(id[:], e[:16])
		off, length, flags := uint64(le.Uint32(e[16:])), uint64(le.Uint32(e[20:])), le.Uint32(e[24:])
		if length == 0 {
			continue
		}
		if off < 64<<10 || off+length > uint64(len(b)) {
			return nil, metaBad("metadata item %s at %d+%d outside the region", id, off, length)
		}
		item := b[off : off+length]
		need := func(n int) error {
			if len(item) < n {
				return metaBad("metadata item %s too short (%d bytes)", id, len(item))
			}
			return nil
		}
		seen[id] = true
		switch id {
		case vhdxFileParamsGUID:
			if err := need(8); err != nil {
				return nil, err
			}
			m.blockSize = le.Uint32(item)
			m.hasParent = le.Uint32(item[4:])&2 != 0
		case vhdxVirtualSizeGUID:
			if err := need(8); err != nil {
				return nil, err
			}
			m.virtualSize = le.Uint64(item)
		case vhdxDiskIDGUID:
			if err := need(16); err != nil {
				return nil, err
			}
			copy(m.diskID[:], item)
		case vhdxLogicalSecGUID:
			if err := need(4); err != nil {
				return nil, err
			}
			m.logicalSector = le.Uint32(item)
		case vhdxPhysicalSecGUID:
			if err := need(4); err != nil {
				return nil, err
			}
			m.physicalSector = le.Uint32(item)
		case vhdxParentLocGUID:
			p, err := parseVHDXParentLocator(item)
			if err != nil {
				return nil, err
			}
			m.parent = p
		default:
			if flags&vhdxMetaIsRequired != 0 {
				return nil, &vhdxMetaErr{unsupported: true, reason: fmt.Sprintf("unknown required metadata item %s", id)}
			}
		}
	}
	for _, id := range []guid{vhdxFileParamsGUID, vhdxVirtualSizeGUID, vhdxLogicalSecGUID} {
		if !seen[id] {
			return nil, metaBad("required metadata item %s missing", id)
		}
	}
	bs := m.blockSize
	if bs < 1<<20 || bs > 256<<20 || bs&(bs-1) != 0 {
		return nil, metaBad("block size %d invalid (1 MiB..256 MiB, a power of two)", bs)
	}
	if m.logicalSector != 512 && m.logicalSector != 4096 {
		return nil, metaBad("logical sector size %d invalid", m.logicalSector)
	}
	if m.virtualSize == 0 || m.virtualSize > vhdxMaxSize || m.virtualSize%uint64(m.logicalSector) != 0 {
		return nil, metaBad("virtual size %d invalid", m.virtualSize)
	}
	if m.hasParent && m.parent == nil {
		return nil, metaBad("differencing disk without a parent locator")
	}
	return m, nil
}

func parseVHDXParentLocator(b []byte) (map[string]string, error) {
	le := binary.LittleEndian
	if len(b) < 20 {
		return nil, metaBad("parent locator truncated")
	}
	var typ guid
	copy(typ[:], b[:16])
	if typ != vhdxParentLocTypeVHD {
		return nil, &vhdxMetaErr{unsupported: true, reason: fmt.Sprintf("parent locator type %s not supported", typ)}
	}
	n := int(le.Uint16(b[18:]))
	if 20+12*n > len(b) {
		return nil, metaBad("parent locator with %d entries truncated", n)
	}
	out := map[string]string{}
	for i := 0; i < n; i++ {
		e := b[20+12*i:]
		ko, vo := uint64(le.Uint32(e)), uint64(le.Uint32(e[4:]))
		kl, vl := uint64(le.Uint16(e[8:])), uint64(le.Uint16(e[10:]))
		if ko+kl > uint64(len(b)) || vo+vl > uint64(len(b)) || kl%2 != 0 || vl%2 != 0 {
			return nil, metaBad("parent locator entry %d outside the item", i)
		}
		out[utf16le(b[ko:ko+kl])] = utf16le(b[vo : vo+vl])
	}
	return out, nil
}

func utf16le(b []byte) string {
	u := make([]uint16, len(b)/2)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return string(utf16.Decode(u))
}
