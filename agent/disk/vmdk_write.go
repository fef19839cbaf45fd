package disk

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
)

// vmdkWriter writes a monolithicSparse VMDK (hosted sparse extent,
// version 1) with 64 KiB grains, a redundant grain directory, and the
// descriptor embedded after the header. All grain tables are laid out
// ahead of the data; each is written once its range is complete.
type vmdkWriter struct {
	f         *os.File
	name      string
	capacity  int64 // sectors
	numGTs    int64
	rgdSector int64
	gdSector  int64
	overhead  int64 // first data sector
	gt        []uint32
	gtIndex   int64
	next      int64 // next free sector
}

const (
	vmdkWGrainSectors = 128
	vmdkWGrainBytes   = vmdkWGrainSectors * vmdkSectorSize
	vmdkWGTEs         = 512
	vmdkWGTSectors    = vmdkWGTEs * 4 / vmdkSectorSize
	vmdkWDescSectors  = 20
	vmdkFlagRGD       = 1 << 1
)

func newVMDKWriter(f *os.File, size int64, name string) (*vmdkWriter, error) {
	if strings.ContainsAny(name, "\"\n") {
		return nil, fmt.Errorf("vmdk: file name %q cannot be written into a descriptor", name)
	}
	w := &vmdkWriter{f: f, name: name, capacity: roundSector(size) / vmdkSectorSize, gtIndex: -1}
	grains := (w.capacity + vmdkWGrainSectors - 1) / vmdkWGrainSectors
	w.numGTs = max(1, (grains+vmdkWGTEs-1)/vmdkWGTEs)
	gdSectors := (w.numGTs*4 + vmdkSectorSize - 1) / vmdkSectorSize
	w.rgdSector = 1 + vmdkWDescSectors
	w.gdSector = w.rgdSector + gdSectors + w.numGTs*vmdkWGTSectors
	end := w.gdSector + gdSectors + w.numGTs*vmdkWGTSectors
	w.overhead = (end + vmdkWGrainSectors - 1) / vmdkWGrainSectors * vmdkWGrainSectors
	w.next = w.overhead
	if w.overhead+grains*vmdkWGrainSectors > 1<<32-1 {
		return nil, fmt.Errorf("vmdk: %d bytes exceed what 32-bit grain table entries address", size)
	}
	return w, nil
}

func (w *vmdkWriter) unit() int64 { return vmdkWGrainBytes }

// gtSector returns the sector of grain table i in the directory at gd.
func (w *vmdkWriter) gtSector(gd, i int64) int64 {
	gdSectors := (w.numGTs*4 + vmdkSectorSize - 1) / vmdkSectorSize
	return gd + gdSectors + i*vmdkWGTSectors
}

func (w *vmdkWriter) write(off int64, p []byte) error {
	g := off / vmdkWGrainBytes
	if idx := g / vmdkWGTEs; idx != w.gtIndex {
		if err := w.flushGT(); err != nil {
			return err
		}
		w.gt, w.gtIndex = make([]uint32, vmdkWGTEs), idx
	}
	sector := w.next
	w.next += vmdkWGrainSectors
	if _, err := w.f.WriteAt(p, sector*vmdkSectorSize); err != nil {
		return err
	}
	w.gt[g%vmdkWGTEs] = uint32(sector)
	return nil
}

func (w *vmdkWriter) flushGT() error {
	if w.gtIndex < 0 {
		return nil
	}
	buf := make([]byte, vmdkWGTEs*4)
	for i, e := range w.gt {
		binary.LittleEndian.PutUint32(buf[i*4:], e)
	}
	for _, gd := range []int64{w.rgdSector, w.gdSector} {
		if _, err := w.f.WriteAt(buf, w.gtSector(gd, w.gtIndex)*vmdkSectorSize); err != nil {
			return err
		}
	}
	w.gtIndex = -1
	return nil
}

func (w *vmdkWriter) finish() error {
	if err := w.flushGT(); err != nil {
		return err
	}
	le := binary.LittleEndian
	for _, gd := range []int64{w.rgdSector, w.gdSector} {
		buf := make([]byte, w.numGTs*4)
		for i := int64(0); i < w.numGTs; i++ {
			le.PutUint32(buf[i*4:], uint32(w.gtSector(gd, i)))
		}
		if _, err := w.f.WriteAt(buf, gd*vmdkSectorSize); err != nil {
			return err
		}
	}
	var cid [4]byte
	if _, err := rand.Read(cid[:]); err != nil {
		return err
	}
	cyl := min(w.capacity/(16*63), 16383)
	desc := fmt.Sprintf(`# Disk DescriptorFile
version=1
CID=%08x
parentCID=ffffffff
createType="monolithicSparse"

# Extent description
RW %d SPARSE "%s"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "%d"
ddb.geometry.heads = "16"
ddb.geometry.sectors = "63"
ddb.adapterType = "ide"
`, le.Uint32(cid[:]), w.capacity, w.name, cyl)
	if len(desc) > vmdkWDescSectors*vmdkSectorSize {
		return fmt.Errorf("vmdk: descriptor of %d bytes does not fit", len(desc))
	}
	if _, err := w.f.WriteAt([]byte(desc), vmdkSectorSize); err != nil {
		return err
	}
	h := make([]byte, vmdkSectorSize)
	copy(h, vmdkSparseMagic)
	le.PutUint32(h[4:], 1)
	le.PutUint32(h[8:], vmdkFlagNewlineTest|vmdkFlagRGD)
	le.PutUint64(h[12:], uint64(w.capacity))
	le.PutUint64(h[20:], vmdkWGrainSectors)
	le.PutUint64(h[28:], 1)
	le.PutUint64(h[36:], vmdkWDescSectors)
	le.PutUint32(h[44:], vmdkWGTEs)
	le.PutUint64(h[48:], uint64(w.rgdSector))
	le.PutUint64(h[56:], uint64(w.gdSector))
	le.PutUint64(h[64:], uint64(w.overhead))
	h[73], h[74], h[75], h[76] = '\n', ' ', '\r', '\n'
	if _, err := w.f.WriteAt(h, 0); err != nil {
		return err
	}
	return w.f.Truncate(w.next * vmdkSectorSize)
}
