package disk

import (
	"encoding/binary"
	"fmt"
	"io"
)

// VHD, from Microsoft's "Virtual Hard Disk Image Format Specification"
// (2006). All fields are big-endian.
const (
	vhdTypeFixed        = 2
	vhdTypeDynamic      = 3
	vhdTypeDifferencing = 4
	vhdDynHeaderSize    = 1024
	vhdUnallocated      = 0xFFFFFFFF
	// vhdMaxGeometry is 65535 cylinders x 16 heads x 255 sectors: images
	// at this geometry are larger than CHS can say.
	vhdMaxGeometry = 65535 * 16 * 255
	vhdMaxSize     = 2040 << 30 // the specification's limit for dynamic disks
)

// vhdFooter is the parsed footer (or its copy at the start of a dynamic disk).
type vhdFooter struct {
	dataOffset  uint64
	creatorApp  string
	currentSize uint64
	cyls        uint16
	heads       uint8
	secs        uint8
	diskType    uint32
	uniqueID    [16]byte
}

func parseVHDFooter(b []byte) (*vhdFooter, error) {
	be := binary.BigEndian
	if len(b) < vhdFooterSize || string(b[:8]) != vhdCookie {
		return nil, fmt.Errorf("no footer cookie")
	}
	if be.Uint32(b[64:]) != vhdChecksum(b[:vhdFooterSize], 64) {
		return nil, fmt.Errorf("footer checksum mismatch")
	}
	f := &vhdFooter{dataOffset: be.Uint64(b[16:]), creatorApp: string(b[28:32]), currentSize: be.Uint64(b[48:]),
		cyls: be.Uint16(b[56:]), heads: b[58], secs: b[59], diskType: be.Uint32(b[60:])}
	copy(f.uniqueID[:], b[68:84])
	return f, nil
}

// virtualSize follows qemu's rule (block/vpc.c), which is also what the
// creating hypervisor shows its guest: Virtual PC and qemu's own "qemu"
// images use the CHS geometry, Hyper-V ("win "), qemu with force_size
// ("qem2"), Disk2vhd, XenServer and XenConverter use current_size, and so
// does any image at the maximum geometry.
func (f *vhdFooter) virtualSize() int64 {
	chs := int64(f.cyls) * int64(f.heads) * int64(f.secs)
	switch f.creatorApp {
	case "win ", "qem2", "d2v ", "CTXS", "tap\x00":
		return int64(f.currentSize)
	}
	if chs == vhdMaxGeometry {
		return int64(f.currentSize)
	}
	return chs * 512
}

func (o *opener) openVHD(c *container) (*image, imageMeta, error) {
	path := c.path
	corrupt := func(format string, args ...any) (*image, imageMeta, error) {
		return nil, imageMeta{}, corruptf(FormatVHD, path, format, args...)
	}
	if c.size < vhdFooterSize {
		return corrupt("file of %d bytes has no footer", c.size)
	}
	buf := make([]byte, vhdFooterSize)
	if err := readPadded(c, buf, c.size-vhdFooterSize); err != nil {
		return nil, imageMeta{}, ioError(FormatVHD, path, "read footer", err)
	}
	foot, err := parseVHDFooter(buf)
	if err != nil {
		// A dynamic disk keeps a copy of the footer at its start.
		if err2 := readPadded(c, buf, 0); err2 != nil {
			return nil, imageMeta{}, ioError(FormatVHD, path, "read footer copy", err2)
		}
		var err2 error
		if foot, err2 = parseVHDFooter(buf); err2 != nil {
			return corrupt("footer invalid (%v) and no valid copy at the start (%v)", err, err2)
		}
	}
	size := foot.virtualSize()
	if size <= 0 || size > vhdMaxSize || size%512 != 0 {
		return corrupt("virtual size %d invalid", size)
	}
	switch foot.diskType {
	case vhdTypeFixed:
		data := c.size - vhdFooterSize
		if size > data {
			return corrupt("fixed disk of %d bytes in a %d-byte file", size, c.size)
		}
		im := newLinearImage(FormatVHD, c, limitedFile{fileReader: c, size: data}, size)
		return im, imageMeta{subformat: "fixed"}, nil
	case vhdTypeDynamic:
	case vhdTypeDifferencing:
		return nil, imageMeta{}, unsupportedf(FormatVHD, path,
			"differencing VHD is not supported: merge it into its parent (Hyper-V Merge-VHD) or convert it to VHDX")
	default:
		return corrupt("unknown disk type %d", foot.diskType)
	}

	hdr := make([]byte, vhdDynHeaderSize)
	if ok, err := readExact(c, hdr, int64(foot.dataOffset)); err != nil {
		return nil, imageMeta{}, ioError(FormatVHD, path, "read dynamic header", err)
	} else if !ok || foot.dataOffset > uint64(c.size) {
		return corrupt("dynamic header at %d beyond end of file", foot.dataOffset)
	}
	be := binary.BigEndian
	if string(hdr[:8]) != "cxsparse" {
		return corrupt("bad dynamic header cookie")
	}
	if be.Uint32(hdr[36:]) != vhdChecksum(hdr, 36) {
		return corrupt("dynamic header checksum mismatch")
	}
	tableOff, entries, blockSize := be.Uint64(hdr[16:]), int64(be.Uint32(hdr[28:])), int64(be.Uint32(hdr[32:]))
	if blockSize < 512*8 || blockSize&(blockSize-1) != 0 || blockSize > 256<<20 {
		return corrupt("block size %d invalid", blockSize)
	}
	if entries*blockSize < size {
		return corrupt("BAT of %d entries of %d bytes does not cover %d bytes", entries, blockSize, size)
	}
	if tableOff > uint64(c.size) || uint64(entries)*4 > uint64(c.size)-tableOff {
		return corrupt("BAT at %d (%d entries) beyond end of file", tableOff, entries)
	}
	vm := &vhdMapper{f: c, path: path, blockSize: blockSize,
		bitmapSize: ((blockSize/512/8 + 511) / 512) * 512, size: size}
	if !o.probe {
		raw := make([]byte, entries*4)
		if err := readPadded(c, raw, int64(tableOff)); err != nil {
			return nil, imageMeta{}, ioError(FormatVHD, path, "read BAT", err)
		}
		n := (size + blockSize - 1) / blockSize
		vm.bat = make([]uint32, n)
		for i := range vm.bat {
			e := be.Uint32(raw[i*4:])
			vm.bat[i] = e
			if e != vhdUnallocated && int64(e)*512+vm.bitmapSize+blockSize > c.size {
				return corrupt("block %d at sector %d runs past the end of the file: truncated image", i, e)
			}
		}
	}
	im := &image{format: FormatVHD, path: path, size: size, m: vm, closers: []io.Closer{c}}
	return im, imageMeta{subformat: "dynamic"}, nil
}

// vhdMapper maps guest offsets through a dynamic disk's BAT. Inside an
// allocated block the data is read directly: blocks are zero-filled when
// allocated, so the sector bitmap matters only for differencing disks.
type vhdMapper struct {
	f          fileReader
	path       string
	blockSize  int64
	bitmapSize int64
	size       int64
	bat        []uint32
}

func (m *vhdMapper) mapAt(off, want int64) (segment, error) {
	bi, in := off/m.blockSize, off%m.blockSize
	e := m.bat[bi]
	length := m.blockSize - in
	if e == vhdUnallocated {
		for next := bi + 1; next < int64(len(m.bat)) && length < want && m.bat[next] == vhdUnallocated; next++ {
			length += m.blockSize
		}
		return segment{kind: segZero, length: length}, nil
	}
	return segment{kind: segData, length: length, file: m.f, off: int64(e)*512 + m.bitmapSize + in}, nil
}
