package pack

// Chunk record flags.
const (
	ChunkEncrypted uint8 = 1 << 0
	// ChunkPatch (repository format 2): the record's plain bytes are a
	// patch (runs of [u32 offset][u32 length][bytes], big-endian, the
	// protocol's patch encoding) over the block whose hash is Base (all
	// zero bytes: a zero block), giving a block of BlockLen bytes whose
	// hash is Hash. Never encrypted.
	ChunkPatch uint8 = 1 << 1
)

// PatchHeaderSize is what ChunkPatch adds to the header: Base and BlockLen.
const PatchHeaderSize = 32 + 4

// ChunkHeaderSize is the fixed part of a chunk payload before its data.
const ChunkHeaderSize = 32 + 1 + 1 + 2 + 4 + 4

// Chunk is a chunk record: one block's stored bytes.
type Chunk struct {
	Hash     [32]byte
	Codec    uint8
	Flags    uint8  // ChunkEncrypted
	KeySlot  uint32 // data key slot when encrypted, else 0
	PlainLen uint32
	Data     []byte // stored bytes: encoded, or nonce||ciphertext when encrypted
	// With ChunkPatch: the hash of the block the patch applies to (zero:
	// a zero block) and the length of the block it gives.
	Base     [32]byte
	BlockLen uint32
}

// EncodeChunk returns the payload of a chunk record.
func EncodeChunk(c Chunk) []byte {
	e := enc{b: make([]byte, 0, ChunkHeaderSize+len(c.Data))}
	e.raw(c.Hash[:])
	e.u8(c.Codec)
	e.u8(c.Flags)
	e.u16(0)
	e.u32(c.KeySlot)
	e.u32(c.PlainLen)
	if c.Flags&ChunkPatch != 0 {
		e.raw(c.Base[:])
		e.u32(c.BlockLen)
	}
	e.raw(c.Data)
	return e.b
}

// DecodeChunk decodes a chunk payload; Data aliases p.
func DecodeChunk(p []byte) (Chunk, error) {
	d := dec{b: p}
	var c Chunk
	c.Hash = d.hash()
	c.Codec = d.u8()
	c.Flags = d.u8()
	if r := d.u16(); r != 0 && d.err == nil {
		return c, formatErr("chunk reserved field %d", r)
	}
	c.KeySlot = d.u32()
	c.PlainLen = d.u32()
	if c.Flags&ChunkPatch != 0 {
		c.Base = d.hash()
		c.BlockLen = d.u32()
	}
	if d.err != nil {
		return c, d.err
	}
	if c.Flags&^(ChunkEncrypted|ChunkPatch) != 0 || c.Flags == ChunkEncrypted|ChunkPatch {
		return c, formatErr("chunk flags %02x", c.Flags)
	}
	if c.Flags&ChunkPatch != 0 && c.BlockLen == 0 {
		return c, formatErr("patch chunk of a block of 0 bytes")
	}
	if (c.Flags&ChunkEncrypted != 0) != (c.KeySlot != 0) {
		return c, formatErr("chunk key slot %d with flags %02x", c.KeySlot, c.Flags)
	}
	c.Data = d.b
	return c, nil
}

// SealedKeySize is the payload size of a key record.
const SealedKeySize = 4 + 32 + 12 + 48

// SealedKey is a key record: a 32-byte data key wrapped to the repository's
// public key (docs/storage-format.md "Encryption").
type SealedKey struct {
	Slot         uint32
	EphemeralPub [32]byte
	Nonce        [12]byte
	Wrapped      [48]byte // AES-256-GCM ciphertext of the data key + tag
}

// EncodeKey returns the payload of a key record.
func EncodeKey(k SealedKey) []byte {
	e := enc{b: make([]byte, 0, SealedKeySize)}
	e.u32(k.Slot)
	e.raw(k.EphemeralPub[:])
	e.raw(k.Nonce[:])
	e.raw(k.Wrapped[:])
	return e.b
}

// DecodeKey decodes a key payload.
func DecodeKey(p []byte) (SealedKey, error) {
	d := dec{b: p}
	var k SealedKey
	k.Slot = d.u32()
	copy(k.EphemeralPub[:], d.need(32))
	copy(k.Nonce[:], d.need(12))
	copy(k.Wrapped[:], d.need(48))
	if err := d.end(); err != nil {
		return k, err
	}
	if k.Slot == 0 {
		return k, formatErr("key slot 0 is reserved")
	}
	return k, nil
}

// Change is one block of a point: a chunk, or all zeros.
type Change struct {
	Block int64
	Zero  bool
	Hash  [32]byte
}

// DiskChanges are a point's changes on one disk.
type DiskChanges struct {
	Disk    string
	Changes []Change
}

// Changes is a point-changes record, one part of a point's changes.
type Changes struct {
	PointID uint64
	Part    uint32
	Machine string
	Disks   []DiskChanges
}

// MaxChangesPerRecord keeps point-changes records far below MaxPayload.
const MaxChangesPerRecord = 65536

// EncodeChanges returns the payload of a point-changes record.
func EncodeChanges(c Changes) []byte {
	n := 0
	for _, d := range c.Disks {
		n += len(d.Changes)
	}
	e := enc{b: make([]byte, 0, 64+n*41)}
	e.u64(c.PointID)
	e.u32(c.Part)
	e.str(c.Machine)
	e.u16(uint16(len(c.Disks)))
	for _, d := range c.Disks {
		e.str(d.Disk)
		e.u32(uint32(len(d.Changes)))
		for _, ch := range d.Changes {
			e.u64(uint64(ch.Block))
			if ch.Zero {
				e.u8(0)
			} else {
				e.u8(1)
				e.raw(ch.Hash[:])
			}
		}
	}
	return e.b
}

// DecodeChanges decodes a point-changes payload.
func DecodeChanges(p []byte) (Changes, error) {
	d := dec{b: p}
	var c Changes
	c.PointID = d.u64()
	c.Part = d.u32()
	c.Machine = d.str()
	nd := int(d.u16())
	for i := 0; i < nd && d.err == nil; i++ {
		var dc DiskChanges
		dc.Disk = d.str()
		n := int(d.u32())
		if n > len(d.b)/9 { // each entry is at least 9 bytes
			return c, formatErr("changes count %d exceeds payload", n)
		}
		dc.Changes = make([]Change, 0, n)
		for j := 0; j < n && d.err == nil; j++ {
			ch := Change{Block: d.i64()}
			switch d.u8() {
			case 0:
				ch.Zero = true
			case 1:
				ch.Hash = d.hash()
			default:
				if d.err == nil {
					d.err = formatErr("change kind")
				}
			}
			if ch.Block < 0 && d.err == nil {
				d.err = formatErr("negative block %d", ch.Block)
			}
			dc.Changes = append(dc.Changes, ch)
		}
		c.Disks = append(c.Disks, dc)
	}
	return c, d.end()
}

// DiskSpec is a disk's geometry as recorded by a point.
type DiskSpec struct {
	Name      string
	Size      int64
	BlockSize uint32
}

// Commit is a point-commit record: the point is complete once this record
// and Parts point-changes records with the same PointID are present.
type Commit struct {
	PointID     uint64
	Machine     string
	InstantNs   int64
	CommittedNs int64
	Consistency string
	Name        string
	LabelSerial uint32
	Bytes       int64
	Changed     int64
	Parts       uint32
	Disks       []DiskSpec
}

// EncodeCommit returns the payload of a point-commit record.
func EncodeCommit(c Commit) []byte {
	e := enc{}
	e.u64(c.PointID)
	e.str(c.Machine)
	e.u64(uint64(c.InstantNs))
	e.u64(uint64(c.CommittedNs))
	e.str(c.Consistency)
	e.str(c.Name)
	e.u32(c.LabelSerial)
	e.u64(uint64(c.Bytes))
	e.u64(uint64(c.Changed))
	e.u32(c.Parts)
	e.u16(uint16(len(c.Disks)))
	for _, d := range c.Disks {
		e.str(d.Name)
		e.u64(uint64(d.Size))
		e.u32(d.BlockSize)
	}
	return e.b
}

// DecodeCommit decodes a point-commit payload.
func DecodeCommit(p []byte) (Commit, error) {
	d := dec{b: p}
	var c Commit
	c.PointID = d.u64()
	c.Machine = d.str()
	c.InstantNs = d.i64()
	c.CommittedNs = d.i64()
	c.Consistency = d.str()
	c.Name = d.str()
	c.LabelSerial = d.u32()
	c.Bytes = d.i64()
	c.Changed = d.i64()
	c.Parts = d.u32()
	nd := int(d.u16())
	for i := 0; i < nd && d.err == nil; i++ {
		ds := DiskSpec{Name: d.str(), Size: d.i64(), BlockSize: d.u32()}
		if ds.Size < 0 && d.err == nil {
			d.err = formatErr("negative disk size")
		}
		c.Disks = append(c.Disks, ds)
	}
	return c, d.end()
}

// Delete is a point-delete record (tombstone).
type Delete struct {
	PointID   uint64
	Machine   string
	DeletedNs int64
}

// EncodeDelete returns the payload of a point-delete record.
func EncodeDelete(x Delete) []byte {
	e := enc{}
	e.u64(x.PointID)
	e.str(x.Machine)
	e.u64(uint64(x.DeletedNs))
	return e.b
}

// DecodeDelete decodes a point-delete payload.
func DecodeDelete(p []byte) (Delete, error) {
	d := dec{b: p}
	x := Delete{PointID: d.u64(), Machine: d.str(), DeletedNs: d.i64()}
	return x, d.end()
}

// Label is a point-label record; the highest Serial of a point wins.
type Label struct {
	PointID uint64
	Serial  uint32
	Name    string
}

// EncodeLabel returns the payload of a point-label record.
func EncodeLabel(l Label) []byte {
	e := enc{}
	e.u64(l.PointID)
	e.u32(l.Serial)
	e.str(l.Name)
	return e.b
}

// DecodeLabel decodes a point-label payload.
func DecodeLabel(p []byte) (Label, error) {
	d := dec{b: p}
	l := Label{PointID: d.u64(), Serial: d.u32(), Name: d.str()}
	return l, d.end()
}

// DeleteMachineFlag in a point-delete record's header flags makes it a
// machine tombstone: every point of Machine with id <= PointID is gone,
// head rows included.
const DeleteMachineFlag uint8 = 1 << 0
