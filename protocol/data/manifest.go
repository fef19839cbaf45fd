package data

// Entry names one changed block of a cycle and its content hash. Zero
// entries carry no hash on the wire (Hash is then the zero value).
type Entry struct {
	Disk  uint16
	Block uint64
	Flags uint8 // FlagZero or 0
	Hash  Hash
}

const (
	entryLen     = 2 + 8 + 1 + 32
	zeroEntryLen = 2 + 8 + 1
)

// Manifest is one part of a cycle's manifest: the changed blocks found so
// far. Parts are numbered from 0; Final marks the last one. A sender may
// send the blocks of a part before or after the receiver's Need for it.
type Manifest struct {
	Cycle   uint64
	Part    uint32
	Final   bool
	Entries []Entry
}

const manifestFinal = 1

// Type is FrameManifest.
func (m *Manifest) Type() uint8 { return FrameManifest }

// Validate checks m against the limits and flag rules.
func (m *Manifest) Validate() error {
	if len(m.Entries) > MaxEntriesPerFrame {
		return tooLarge("manifest", "%d entries over %d", len(m.Entries), MaxEntriesPerFrame)
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		if e.Flags&^FlagZero != 0 {
			return invalid("manifest", "entry %d: flags %#x (only zero is allowed)", i, e.Flags)
		}
		if e.Flags&FlagZero != 0 && e.Hash != (Hash{}) {
			return invalid("manifest", "entry %d: zero entry with a hash", i)
		}
	}
	return nil
}

// Append appends m's payload to dst.
func (m *Manifest) Append(dst []byte) []byte {
	dst = appendU64(dst, m.Cycle)
	dst = appendU32(dst, m.Part)
	var flags uint8
	if m.Final {
		flags |= manifestFinal
	}
	dst = append(dst, flags)
	dst = appendU32(dst, uint32(len(m.Entries)))
	for i := range m.Entries {
		e := &m.Entries[i]
		dst = appendU16(dst, e.Disk)
		dst = appendU64(dst, e.Block)
		dst = append(dst, e.Flags)
		if e.Flags&FlagZero == 0 {
			dst = append(dst, e.Hash[:]...)
		}
	}
	return dst
}

// Decode parses a payload into m, reusing m.Entries' storage.
func (m *Manifest) Decode(b []byte) error {
	r := reader{b: b, frame: "manifest"}
	m.Cycle = r.u64()
	m.Part = r.u32()
	flags := r.u8()
	n := r.u32()
	if r.err != nil {
		return r.err
	}
	if flags&^manifestFinal != 0 {
		return invalid("manifest", "flags %#x", flags)
	}
	m.Final = flags&manifestFinal != 0
	if n > MaxEntriesPerFrame {
		return tooLarge("manifest", "%d entries over %d", n, MaxEntriesPerFrame)
	}
	if int(n)*zeroEntryLen > len(r.b) {
		return invalid("manifest", "%d entries cannot fit in %d bytes", n, len(r.b))
	}
	if cap(m.Entries) < int(n) {
		m.Entries = make([]Entry, n)
	}
	m.Entries = m.Entries[:n]
	for i := range m.Entries {
		e := &m.Entries[i]
		e.Disk = r.u16()
		e.Block = r.u64()
		e.Flags = r.u8()
		if r.err != nil {
			return r.err
		}
		if e.Flags&^FlagZero != 0 {
			return invalid("manifest", "entry %d: flags %#x", i, e.Flags)
		}
		if e.Flags&FlagZero == 0 {
			e.Hash = r.hash()
		} else {
			e.Hash = Hash{}
		}
	}
	return r.end()
}

// Need is the receiver's answer to a manifest part: Need[i] says whether it
// wants the data of Entries[i] (it lacks that content). len(Need) equals the
// part's entry count; the receiver checks that against the part.
type Need struct {
	Cycle uint64
	Part  uint32
	Need  []bool
}

// Type is FrameNeed.
func (n *Need) Type() uint8 { return FrameNeed }

// Validate checks n against the limits.
func (n *Need) Validate() error {
	if len(n.Need) > MaxEntriesPerFrame {
		return tooLarge("need", "%d entries over %d", len(n.Need), MaxEntriesPerFrame)
	}
	return nil
}

// Append appends n's payload to dst.
func (n *Need) Append(dst []byte) []byte {
	dst = appendU64(dst, n.Cycle)
	dst = appendU32(dst, n.Part)
	dst = appendU32(dst, uint32(len(n.Need)))
	return appendBitmap(dst, n.Need)
}

// Decode parses a payload into n, reusing n.Need's storage.
func (n *Need) Decode(b []byte) error {
	r := reader{b: b, frame: "need"}
	n.Cycle = r.u64()
	n.Part = r.u32()
	count := r.u32()
	if r.err != nil {
		return r.err
	}
	if count > MaxEntriesPerFrame {
		return tooLarge("need", "%d entries over %d", count, MaxEntriesPerFrame)
	}
	n.Need = r.bitmap(n.Need, int(count))
	return r.end()
}
