package track

import "math/bits"

// PageSize is the tracking granularity.
const PageSize = 4096

// Range is a byte range of the file.
type Range struct{ Offset, Length int64 }

// pageSet is a set of page numbers, as a bitmap that grows on demand.
type pageSet struct{ words []uint64 }

// addBytes marks every page that [off, off+n) touches.
func (s *pageSet) addBytes(off, n int64) {
	if n <= 0 || off < 0 {
		return
	}
	for p := off / PageSize; p <= (off+n-1)/PageSize; p++ {
		w := int(p / 64)
		if w >= len(s.words) {
			s.words = append(s.words, make([]uint64, w+1-len(s.words)+len(s.words)/4)...)
		}
		s.words[w] |= 1 << (p % 64)
	}
}

// union adds every page of o.
func (s *pageSet) union(o *pageSet) {
	if len(o.words) > len(s.words) {
		s.words = append(s.words, make([]uint64, len(o.words)-len(s.words))...)
	}
	for i, w := range o.words {
		s.words[i] |= w
	}
}

func (s *pageSet) clear() { clear(s.words) }

// ranges returns the set as ascending, coalesced byte ranges.
func (s *pageSet) ranges() []Range {
	var out []Range
	for i, w := range s.words {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			w &^= 1 << b
			off := (int64(i)*64 + int64(b)) * PageSize
			if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length == off {
				out[n-1].Length += PageSize
				continue
			}
			out = append(out, Range{Offset: off, Length: PageSize})
		}
	}
	return out
}

// Cut is what a cut found.
type Cut struct {
	// Ranges are the pages written since Base's instant (with a frozen
	// filesystem at the cut: up to the cut).
	Ranges []Range
	// Fresh are the pages written in this cut's own window: since the
	// cut before it (or since Base, for the first). A pre-copy reads
	// Ranges once, then only each later cut's Fresh pages.
	Fresh []Range
	// Lost says why the ranges cannot be trusted ("" when they can).
	Lost string
	// Base is the point the ranges are relative to (0: none yet).
	Base int64
}

// Usable reports whether the cut alone says what changed since point head.
func (c Cut) Usable(head int64) bool { return c.Lost == "" && c.Base > 0 && c.Base == head }
