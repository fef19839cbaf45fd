package snapshot

import "sort"

// incomparable flags: the physical address does not identify the bytes.
const incomparable = FlagUnknown | FlagDelalloc | FlagEncoded | FlagInline | FlagTail

// DiffExtents returns the logical ranges of [0, size) where two extent maps
// (of two reflink views of one file) may differ: where one has data the
// other lacks, where both have data at different physical places, or where
// an address cannot be compared. Ranges where both share the same physical
// blocks are unchanged — the filesystem copied on write everything written
// since the older view. The result is sorted and merged.
func DiffExtents(a, b []PhysExtent, size int64) []Range {
	type seg struct {
		start, end int64
		phys       int64 // physical address at start; -1 hole
		flags      uint32
	}
	norm := func(es []PhysExtent) []seg {
		s := make([]seg, 0, len(es))
		for _, e := range es {
			if e.Length <= 0 || e.Logical >= size {
				continue
			}
			s = append(s, seg{start: e.Logical, end: min(e.Logical+e.Length, size), phys: e.Physical, flags: e.Flags})
		}
		sort.Slice(s, func(i, j int) bool { return s[i].start < s[j].start })
		return s
	}
	sa, sb := norm(a), norm(b)
	// Collect every boundary, then compare the two maps on each piece.
	cuts := []int64{0, size}
	for _, s := range append(append([]seg{}, sa...), sb...) {
		cuts = append(cuts, s.start, s.end)
	}
	sort.Slice(cuts, func(i, j int) bool { return cuts[i] < cuts[j] })
	at := func(s []seg, i *int, x int64) (phys int64, flags uint32, hole bool) {
		for *i < len(s) && s[*i].end <= x {
			*i++
		}
		if *i < len(s) && s[*i].start <= x {
			return s[*i].phys + (x - s[*i].start), s[*i].flags, false
		}
		return 0, 0, true
	}
	var out []Range
	var ia, ib int
	for k := 0; k+1 < len(cuts); k++ {
		lo, hi := cuts[k], cuts[k+1]
		if lo >= hi || lo >= size {
			continue
		}
		pa, fa, ha := at(sa, &ia, lo)
		pb, fb, hb := at(sb, &ib, lo)
		same := false
		switch {
		case ha && hb:
			same = true
		case ha != hb:
			same = false
		case fa&incomparable != 0 || fb&incomparable != 0:
			same = false
		default:
			same = pa == pb && fa&FlagUnwritten == fb&FlagUnwritten
		}
		if same {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length == lo {
			out[n-1].Length += hi - lo
		} else {
			out = append(out, Range{Offset: lo, Length: hi - lo})
		}
	}
	return out
}

// BlocksOf turns byte ranges into the sorted, unique block numbers they touch.
func BlocksOf(rs []Range, blockSize int64) []int64 {
	var out []int64
	for _, r := range rs {
		first := r.Offset / blockSize
		last := (r.Offset + r.Length - 1) / blockSize
		for b := first; b <= last; b++ {
			if n := len(out); n == 0 || out[n-1] < b {
				out = append(out, b)
			}
		}
	}
	return out
}
