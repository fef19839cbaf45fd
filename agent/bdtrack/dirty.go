package bdtrack

import "math/bits"

// Options tune Open; the zero value is usable.
type Options struct {
	// BPFFS is where bpffs is (or is mounted if it is not);
	// default /sys/fs/bpf. The tracker is pinned in <BPFFS>/ferry/<maj>_<min>.
	BPFFS string
	// MaxBitmapBytes bounds one bitmap (there are two); default
	// DefaultMaxBitmapBytes, at most 256 MiB.
	MaxBitmapBytes int64
}

const (
	// DefaultMaxBitmapBytes covers 2 TiB at 4 KiB blocks, 32 TiB at 64 KiB.
	DefaultMaxBitmapBytes = 64 << 20
	maxBitmapBytesLimit   = 256 << 20 // 2^31 bits: block numbers fit a BPF immediate
	// MaxWordsPerEvent bounds the program's loop (bpf_loop): one request
	// may mark up to this many full 64-bit words (plus two partial ones)
	// before it counts as an overflow: 16 GiB of 4 KiB blocks, 256 GiB of
	// 64 KiB blocks, about a millisecond of marking.
	MaxWordsPerEvent = 1 << 16
	// FormatVersion is stored in the pinned meta map; bump it when the maps
	// or program change meaning.
	FormatVersion = 1
)

// Dirty is what one Cut found: a bitset of the blocks written since the
// previous cut.
type Dirty struct {
	BlockSize int
	NumBlocks uint64   // blocks on the device
	Words     []uint64 // bit b%64 of Words[b/64] is block b
	// Overflow: a request was too large for the program to mark in full;
	// the bitset is incomplete and the caller must resync.
	Overflow bool
}

// Has reports whether block b is dirty.
func (d Dirty) Has(b uint64) bool {
	return b/64 < uint64(len(d.Words)) && d.Words[b/64]&(1<<(b%64)) != 0
}

// Count is the number of dirty blocks.
func (d Dirty) Count() int {
	n := 0
	for _, w := range d.Words {
		n += bits.OnesCount64(w)
	}
	return n
}

// Blocks lists the dirty block numbers in order.
func (d Dirty) Blocks() []uint64 {
	var out []uint64
	for i, w := range d.Words {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			out = append(out, uint64(i)*64+uint64(b))
			w &= w - 1
		}
	}
	return out
}

// Merge ORs o into d (for callers accumulating several cuts).
func (d *Dirty) Merge(o Dirty) {
	if len(d.Words) < len(o.Words) {
		d.Words = append(d.Words, make([]uint64, len(o.Words)-len(d.Words))...)
	}
	for i, w := range o.Words {
		d.Words[i] |= w
	}
	d.Overflow = d.Overflow || o.Overflow
	if d.BlockSize == 0 {
		d.BlockSize, d.NumBlocks = o.BlockSize, o.NumBlocks
	}
}

// Stats counts the requests the program marked, per hook, since the
// tracker was created.
type Stats struct {
	Queued, BioCompleted, RqCompleted, Overflows uint64
}
