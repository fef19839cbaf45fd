package data

import (
	"math"

	"github.com/zeebo/blake3"
)

// The summary resync (protocol v2, docs/protocol.md §6.9): instead of a
// 32-byte hash per block, the controller sends a 4-byte fingerprint per
// block of every group of GroupBlocks blocks it holds anything of; the
// agent marks the blocks whose fingerprint (or zero-ness) differs and
// proves the rest equal with one strong digest per group, which the
// controller checks. A block whose fingerprint collides by chance (or by
// design) fails its group's digest, and the whole group is then sent.

// Frame types of the summary resync on hashes streams.
const (
	FrameSummary  = 9  // SumRun: controller → agent
	FrameVerify   = 10 // VerifyRun: agent → controller
	FrameVerified = 11 // Verified: controller → agent
)

const (
	// GroupBlocks is the blocks of one group: runs start and end on group
	// boundaries.
	GroupBlocks = 64
	// PrintLen is the bytes of a block's fingerprint: the first bytes of
	// its hash.
	PrintLen = 4
	// maxGroupsPerRun bounds the groups of one run.
	maxGroupsPerRun = MaxEntriesPerFrame / GroupBlocks
)

// Print is a block's fingerprint: the first PrintLen bytes of its hash.
type Print [PrintLen]byte

// PrintOf returns h's fingerprint.
func PrintOf(h Hash) (p Print) {
	copy(p[:], h[:PrintLen])
	return p
}

// checkRun validates a run's start and length in blocks.
func checkRun(frame string, start uint64, n int) error {
	if n == 0 || n%GroupBlocks != 0 {
		return invalid(frame, "%d blocks: want a positive multiple of %d", n, GroupBlocks)
	}
	if n > MaxEntriesPerFrame {
		return tooLarge(frame, "%d blocks over %d", n, MaxEntriesPerFrame)
	}
	if start%GroupBlocks != 0 {
		return invalid(frame, "run starts at block %d, not on a group boundary", start)
	}
	if start > math.MaxUint64-uint64(n-1) {
		return invalid(frame, "run from %d of %d blocks overflows", start, n)
	}
	return nil
}

// SumRun is the controller's summary of whole consecutive groups of one
// disk: per block whether it is zero (never written included) and, when
// not, its fingerprint. Prints[i] is meaningless (and not on the wire)
// where Zero[i].
type SumRun struct {
	Disk   uint16
	Start  uint64 // a multiple of GroupBlocks
	Zero   []bool // len is a multiple of GroupBlocks, ≤ MaxEntriesPerFrame
	Prints []Print
}

// Type is FrameSummary.
func (s *SumRun) Type() uint8 { return FrameSummary }

// Validate checks the run's alignment and length.
func (s *SumRun) Validate() error {
	if len(s.Zero) != len(s.Prints) {
		return invalid("summary", "%d zero flags for %d prints", len(s.Zero), len(s.Prints))
	}
	if err := checkRun("summary", s.Start, len(s.Zero)); err != nil {
		return err
	}
	for i, z := range s.Zero {
		if z && s.Prints[i] != (Print{}) {
			return invalid("summary", "block %d: zero with a print", i)
		}
	}
	return nil
}

// Append appends s's payload to dst:
// u16 disk, u64 start, u32 count, zero bitmap, 4 bytes per non-zero block.
func (s *SumRun) Append(dst []byte) []byte {
	dst = appendU16(dst, s.Disk)
	dst = appendU64(dst, s.Start)
	dst = appendU32(dst, uint32(len(s.Zero)))
	dst = appendBitmap(dst, s.Zero)
	for i := range s.Prints {
		if !s.Zero[i] {
			dst = append(dst, s.Prints[i][:]...)
		}
	}
	return dst
}

// Decode parses a payload into s, reusing its slices' storage.
func (s *SumRun) Decode(b []byte) error {
	r := reader{b: b, frame: "summary"}
	s.Disk, s.Start = r.u16(), r.u64()
	n := r.u32()
	if r.err != nil {
		return r.err
	}
	if n > MaxEntriesPerFrame {
		return tooLarge("summary", "%d blocks over %d", n, MaxEntriesPerFrame)
	}
	s.Zero = r.bitmap(s.Zero, int(n))
	if r.err != nil {
		return r.err
	}
	present := 0
	for _, z := range s.Zero {
		if !z {
			present++
		}
	}
	if present*PrintLen != len(r.b) {
		return invalid("summary", "%d prints need %d bytes, have %d", present, present*PrintLen, len(r.b))
	}
	if cap(s.Prints) < int(n) {
		s.Prints = make([]Print, n)
	}
	s.Prints = s.Prints[:n]
	for i := range s.Prints {
		s.Prints[i] = Print{}
		if !s.Zero[i] {
			copy(s.Prints[i][:], r.bytes(PrintLen))
		}
	}
	if err := r.end(); err != nil {
		return err
	}
	return s.Validate()
}

// GroupCheck is the agent's claim about one group: the blocks of Differ
// (bit i: block first+i) differ from the controller's, and every other
// block equals it, as Digest proves (GroupDigest with Differ's blocks
// skipped).
type GroupCheck struct {
	Differ uint64
	Digest Hash
}

// VerifyRun answers one SumRun: a GroupCheck per group of it, in order.
type VerifyRun struct {
	Disk   uint16
	Start  uint64
	Groups []GroupCheck
}

// Type is FrameVerify.
func (v *VerifyRun) Type() uint8 { return FrameVerify }

// Validate checks the run's alignment and length.
func (v *VerifyRun) Validate() error {
	return checkRun("verify", v.Start, len(v.Groups)*GroupBlocks)
}

// Append appends v's payload to dst: u16 disk, u64 start, u32 groups, then
// per group a u64 differ bitmap (bit i = block first+i) and a 32-byte
// digest.
func (v *VerifyRun) Append(dst []byte) []byte {
	dst = appendU16(dst, v.Disk)
	dst = appendU64(dst, v.Start)
	dst = appendU32(dst, uint32(len(v.Groups)))
	for _, g := range v.Groups {
		dst = appendU64(dst, g.Differ)
		dst = append(dst, g.Digest[:]...)
	}
	return dst
}

// Decode parses a payload into v, reusing its slice's storage.
func (v *VerifyRun) Decode(b []byte) error {
	r := reader{b: b, frame: "verify"}
	v.Disk, v.Start = r.u16(), r.u64()
	n := r.u32()
	if r.err != nil {
		return r.err
	}
	if n > maxGroupsPerRun {
		return tooLarge("verify", "%d groups over %d", n, maxGroupsPerRun)
	}
	if int(n)*(8+len(Hash{})) != len(r.b) {
		return invalid("verify", "%d groups need %d bytes, have %d", n, int(n)*(8+len(Hash{})), len(r.b))
	}
	v.Groups = v.Groups[:0]
	for range n {
		v.Groups = append(v.Groups, GroupCheck{Differ: r.u64(), Digest: r.hash()})
	}
	if err := r.end(); err != nil {
		return err
	}
	return v.Validate()
}

// Verified is the controller's verdict on a VerifyRun: bit i set when
// group i's digest did not match (a block the agent took for equal is
// not; it must send the whole group).
type Verified struct {
	Disk     uint16
	Start    uint64
	Mismatch []bool // one per group
}

// Type is FrameVerified.
func (v *Verified) Type() uint8 { return FrameVerified }

// Validate checks the run's alignment and length.
func (v *Verified) Validate() error {
	return checkRun("verified", v.Start, len(v.Mismatch)*GroupBlocks)
}

// Append appends v's payload to dst: u16 disk, u64 start, u32 groups,
// mismatch bitmap.
func (v *Verified) Append(dst []byte) []byte {
	dst = appendU16(dst, v.Disk)
	dst = appendU64(dst, v.Start)
	dst = appendU32(dst, uint32(len(v.Mismatch)))
	return appendBitmap(dst, v.Mismatch)
}

// Decode parses a payload into v.
func (v *Verified) Decode(b []byte) error {
	r := reader{b: b, frame: "verified"}
	v.Disk, v.Start = r.u16(), r.u64()
	n := r.u32()
	if r.err != nil {
		return r.err
	}
	if n > maxGroupsPerRun {
		return tooLarge("verified", "%d groups over %d", n, maxGroupsPerRun)
	}
	v.Mismatch = r.bitmap(v.Mismatch, int(n))
	if err := r.end(); err != nil {
		return err
	}
	return v.Validate()
}

// GroupDigest computes a group's digest: BLAKE3 of
// "ferry group v2" ‖ u16 disk ‖ u64 first block, then per block in order
// 0x00 (zero), 0x01 ‖ hash (not zero) or 0x02 (skipped: in Differ). Both
// sides compute it, the agent from its blocks, the controller from its
// hashes; equal digests prove every block not skipped equal.
type GroupDigest struct {
	h *blake3.Hasher
}

// NewGroupDigest starts the digest of the group of disk whose first block
// is first.
func NewGroupDigest(disk uint16, first uint64) *GroupDigest {
	g := &GroupDigest{h: blake3.New()}
	g.Reset(disk, first)
	return g
}

// Reset starts the digest of another group.
func (g *GroupDigest) Reset(disk uint16, first uint64) {
	g.h.Reset()
	var hdr []byte
	hdr = append(hdr, "ferry group v2"...)
	hdr = appendU16(hdr, disk)
	hdr = appendU64(hdr, first)
	_, _ = g.h.Write(hdr)
}

// Zero adds an all-zero block.
func (g *GroupDigest) Zero() { _, _ = g.h.Write([]byte{0}) }

// Block adds a block with content hash h.
func (g *GroupDigest) Block(h Hash) {
	_, _ = g.h.Write([]byte{1})
	_, _ = g.h.Write(h[:])
}

// Skip adds a block the agent declared different.
func (g *GroupDigest) Skip() { _, _ = g.h.Write([]byte{2}) }

// Sum returns the digest.
func (g *GroupDigest) Sum() (h Hash) {
	copy(h[:], g.h.Sum(nil))
	return h
}
