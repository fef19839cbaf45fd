package disk

import (
	"context"
	"errors"
	"sort"
)

// ErrNotComparable says ChangedRanges cannot compare two images: the
// caller must compare every allocated block instead.
var ErrNotComparable = errors.New("images cannot be compared by their mappings")

// ChangedRanges returns the guest ranges of cur that may differ from base,
// ascending and coalesced, without reading guest data. base and cur are
// two reflink clones of one image file, taken at two instants, opened with
// the same options; hostChanged are the byte ranges of cur's container
// file that may differ from base's (the filesystem's extent diff: where
// both clones share physical blocks, the bytes are equal).
//
// Both mappings are walked side by side: a guest range that maps to
// different places (another host offset, data against a hole, a cluster
// allocated or discarded) changed; one that maps to the same place in the
// container changed only where that place is in hostChanged. Ranges that
// fall through to a parent (a backing file, which does not change under a
// running image) or read zeros in both are unchanged. An image whose data
// lives in other files than its container (VMDK extents, a qcow2 data
// file) or whose virtual size changed is ErrNotComparable.
//
// Cost: the two images' tables (for qcow2, the L2 tables: 8 bytes per
// cluster), read only when hostChanged is not empty.
func ChangedRanges(ctx context.Context, base, cur Source, hostChanged []Extent) ([]Extent, error) {
	bi, ok1 := base.(*image)
	ci, ok2 := cur.(*image)
	if !ok1 || !ok2 || bi.format != ci.format || bi.size != ci.size || bi.format == FormatRaw {
		return nil, ErrNotComparable
	}
	if len(hostChanged) == 0 {
		return nil, nil
	}
	hc := normalize(append([]Extent(nil), hostChanged...))
	// inHost returns the parts of host range [off, off+n) in hostChanged,
	// as offsets relative to off.
	inHost := func(off, n int64) []Extent {
		i := sort.Search(len(hc), func(i int) bool { return hc[i].End() > off })
		var out []Extent
		for ; i < len(hc) && hc[i].Offset < off+n; i++ {
			lo, hi := max(hc[i].Offset, off), min(hc[i].End(), off+n)
			out = append(out, Extent{lo - off, hi - lo})
		}
		return out
	}
	var out []Extent
	steps := 0
	for off := int64(0); off < ci.size; {
		if steps++; steps%ctxCheckEvery == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		sb, err := bi.m.mapAt(off, bi.size-off)
		if err != nil {
			return nil, err
		}
		sc, err := ci.m.mapAt(off, ci.size-off)
		if err != nil {
			return nil, err
		}
		if sb.length <= 0 || sc.length <= 0 {
			return nil, corruptf(ci.format, ci.path, "empty mapping at guest offset %d", off)
		}
		n := min(sb.length, sc.length, ci.size-off)
		switch {
		case sb.kind != sc.kind:
			out = appendExtent(out, Extent{off, n})
		case sc.kind == segData:
			if !ownFile(bi, sb.file) || !ownFile(ci, sc.file) {
				return nil, ErrNotComparable
			}
			if sb.off != sc.off {
				out = appendExtent(out, Extent{off, n})
				break
			}
			for _, r := range inHost(sc.off, n) {
				out = appendExtent(out, Extent{off + r.Offset, r.Length})
			}
		case sc.kind == segCompressed:
			if !ownFile(bi, sb.comp.file) || !ownFile(ci, sc.comp.file) {
				return nil, ErrNotComparable
			}
			// A compressed cluster is compared whole: same place and no
			// changed byte in it, or the whole cluster from here.
			cb, cc := sb.comp, sc.comp
			if cb.off != cc.off || cb.n != cc.n || cb.locate != nil || cc.locate != nil || len(inHost(cc.off, cc.n)) > 0 {
				out = appendExtent(out, Extent{off, n})
			}
		}
		off += n
	}
	return normalize(out), nil
}

// ownFile reports whether f is im's own container file (not a parent's or
// an extent file).
func ownFile(im *image, f fileReader) bool {
	for _, c := range im.closers {
		if fr, ok := c.(fileReader); ok && fr == f {
			return true
		}
	}
	return false
}
