package data

import "math"

// HashRun reports the content hashes of consecutive blocks of one disk,
// Start, Start+1, …, for a resync: the receiver compares them with what it
// holds and asks for the blocks that differ. Hashes[i] is meaningless (and
// not on the wire) where Zero[i].
type HashRun struct {
	Disk   uint16
	Start  uint64
	Zero   []bool
	Hashes []Hash
}

// Type is FrameHashes.
func (h *HashRun) Type() uint8 { return FrameHashes }

// Validate checks the run's length, its end, and that Zero and Hashes
// agree in length.
func (h *HashRun) Validate() error {
	if len(h.Zero) != len(h.Hashes) {
		return invalid("hashes", "%d zero flags for %d hashes", len(h.Zero), len(h.Hashes))
	}
	if len(h.Hashes) == 0 {
		return invalid("hashes", "empty run")
	}
	if len(h.Hashes) > MaxEntriesPerFrame {
		return tooLarge("hashes", "%d blocks over %d", len(h.Hashes), MaxEntriesPerFrame)
	}
	if h.Start > math.MaxUint64-uint64(len(h.Hashes)-1) {
		return invalid("hashes", "run from %d of %d blocks overflows", h.Start, len(h.Hashes))
	}
	for i, z := range h.Zero {
		if z && h.Hashes[i] != (Hash{}) {
			return invalid("hashes", "block %d: zero with a hash", i)
		}
	}
	return nil
}

// Append appends h's payload to dst.
func (h *HashRun) Append(dst []byte) []byte {
	dst = appendU16(dst, h.Disk)
	dst = appendU64(dst, h.Start)
	dst = appendU32(dst, uint32(len(h.Hashes)))
	dst = appendBitmap(dst, h.Zero)
	for i := range h.Hashes {
		if !h.Zero[i] {
			dst = append(dst, h.Hashes[i][:]...)
		}
	}
	return dst
}

// Decode parses a payload into h, reusing its slices' storage.
func (h *HashRun) Decode(b []byte) error {
	r := reader{b: b, frame: "hashes"}
	h.Disk = r.u16()
	h.Start = r.u64()
	n := r.u32()
	if r.err != nil {
		return r.err
	}
	if n > MaxEntriesPerFrame {
		return tooLarge("hashes", "%d blocks over %d", n, MaxEntriesPerFrame)
	}
	h.Zero = r.bitmap(h.Zero, int(n))
	if r.err != nil {
		return r.err
	}
	present := 0
	for _, z := range h.Zero {
		if !z {
			present++
		}
	}
	if present*len(Hash{}) != len(r.b) {
		return invalid("hashes", "%d hashes need %d bytes, have %d", present, present*len(Hash{}), len(r.b))
	}
	if cap(h.Hashes) < int(n) {
		h.Hashes = make([]Hash, n)
	}
	h.Hashes = h.Hashes[:n]
	for i := range h.Hashes {
		if h.Zero[i] {
			h.Hashes[i] = Hash{}
		} else {
			h.Hashes[i] = r.hash()
		}
	}
	if err := r.end(); err != nil {
		return err
	}
	return h.Validate()
}
