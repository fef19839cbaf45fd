package disk

import "sort"

// appendExtent appends e to a list sorted by offset, merging it with the
// last extent when they touch.
func appendExtent(list []Extent, e Extent) []Extent {
	if e.Length <= 0 {
		return list
	}
	if n := len(list); n > 0 && list[n-1].End() >= e.Offset {
		if e.End() > list[n-1].End() {
			list[n-1].Length = e.End() - list[n-1].Offset
		}
		return list
	}
	return append(list, e)
}

// normalize sorts and coalesces a list of extents.
func normalize(list []Extent) []Extent {
	sort.Slice(list, func(i, j int) bool { return list[i].Offset < list[j].Offset })
	var out []Extent
	for _, e := range list {
		out = appendExtent(out, e)
	}
	return out
}

// intersect returns the parts of a that lie in b; both sorted and coalesced.
func intersect(a, b []Extent) []Extent {
	var out []Extent
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		lo := max(a[i].Offset, b[j].Offset)
		hi := min(a[i].End(), b[j].End())
		if lo < hi {
			out = appendExtent(out, Extent{lo, hi - lo})
		}
		if a[i].End() < b[j].End() {
			i++
		} else {
			j++
		}
	}
	return out
}

// clip cuts a sorted list at limit.
func clip(list []Extent, limit int64) []Extent {
	var out []Extent
	for _, e := range list {
		if e.Offset >= limit {
			break
		}
		if e.End() > limit {
			e.Length = limit - e.Offset
		}
		out = append(out, e)
	}
	return out
}
