package disk

import (
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"sync"
)

func (o *opener) openVHDX(c *container) (*image, imageMeta, error) {
	path := c.path
	corrupt := func(format string, args ...any) (*image, imageMeta, error) {
		return nil, imageMeta{}, corruptf(FormatVHDX, path, format, args...)
	}
	ioFail := func(op string, err error) (*image, imageMeta, error) {
		return nil, imageMeta{}, ioError(FormatVHDX, path, op, err)
	}
	hdrArea := make([]byte, vhdxHeaderArea)
	if ok, err := readExact(c, hdrArea, 0); err != nil {
		return ioFail("read headers", err)
	} else if !ok {
		return corrupt("file of %d bytes is shorter than the 1 MiB header area", c.size)
	}
	if string(hdrArea[:8]) != vhdxSignature {
		return corrupt("bad file signature")
	}
	h1, err1 := parseVHDXHeader(hdrArea[vhdxHeaderOff1:])
	h2, err2 := parseVHDXHeader(hdrArea[vhdxHeaderOff2:])
	h := h1
	switch {
	case err1 != nil && err2 != nil:
		return corrupt("both headers invalid: %v; %v", err1, err2)
	case err1 != nil:
		h = h2
	case err2 == nil && h2.seq > h1.seq:
		h = h2
	}
	if h.version != 1 {
		return nil, imageMeta{}, unsupportedf(FormatVHDX, path, "version %d not supported", h.version)
	}

	// The log is replayed before anything it may have changed is read.
	var f fileReader = c
	if !h.logGUID.isZero() && !o.probe {
		ov, err := replayVHDXLog(c, h)
		var le *vhdxLogError
		switch {
		case errors.As(err, &le) && o.opts.AllowDirty:
			// diagnostics: read the file as it is
		case errors.As(err, &le) && le.unsupported:
			return nil, imageMeta{}, unsupportedf(FormatVHDX, path, "log replay impossible: %s", le.reason)
		case errors.As(err, &le):
			return nil, imageMeta{}, dirtyf(FormatVHDX, path, "log replay impossible: %s", le.reason)
		case err != nil:
			return ioFail("read log", err)
		default:
			f = ov
		}
	}

	var regions []vhdxRegion
	rt := make([]byte, vhdxRegionSize)
	var rerr error
	for _, off := range []int64{vhdxRegionOff1, vhdxRegionOff2} {
		if ok, err := readExact(f, rt, off); err != nil {
			return ioFail("read region table", err)
		} else if !ok {
			return corrupt("region table beyond end of file")
		}
		if regions, rerr = parseVHDXRegionTable(rt); rerr == nil {
			break
		}
	}
	if rerr != nil {
		return corrupt("both region tables invalid: %v", rerr)
	}
	var bat, meta *vhdxRegion
	for i := range regions {
		r := &regions[i]
		switch r.id {
		case vhdxBATGUID:
			bat = r
		case vhdxMetadataGUID:
			meta = r
		default:
			if r.required {
				return nil, imageMeta{}, unsupportedf(FormatVHDX, path, "unknown required region %s", r.id)
			}
		}
	}
	if bat == nil || meta == nil {
		return corrupt("BAT or metadata region missing")
	}
	for _, r := range []*vhdxRegion{bat, meta} {
		if r.off < vhdxHeaderArea || r.off%vhdxMB != 0 || r.length == 0 || int64(r.off)+int64(r.length) > f.Size() {
			return corrupt("region %s at %d+%d invalid for a %d-byte file", r.id, r.off, r.length, f.Size())
		}
	}
	if meta.length > vhdxMaxMetadata {
		return corrupt("metadata region of %d bytes too large", meta.length)
	}
	mb := make([]byte, meta.length)
	if err := readPadded(f, mb, int64(meta.off)); err != nil {
		return ioFail("read metadata", err)
	}
	md, err := parseVHDXMetadata(mb)
	if err != nil {
		var me *vhdxMetaErr
		if errors.As(err, &me) && me.unsupported {
			return nil, imageMeta{}, unsupportedf(FormatVHDX, path, "%s", me.reason)
		}
		return corrupt("metadata: %v", err)
	}

	m := imageMeta{subformat: "dynamic", ident: h.dataWrite.String()}
	vm := &vhdxMapper{f: f, path: path, blockSize: int64(md.blockSize), sector: int64(md.logicalSector),
		size: int64(md.virtualSize), diff: md.hasParent, bitmaps: map[int64][]byte{}}
	vm.chunkRatio = (int64(1) << 23) * vm.sector / vm.blockSize
	dataBlocks := (vm.size + vm.blockSize - 1) / vm.blockSize
	var entries int64
	if md.hasParent {
		entries = (dataBlocks + vm.chunkRatio - 1) / vm.chunkRatio * (vm.chunkRatio + 1)
	} else {
		entries = dataBlocks + (dataBlocks-1)/vm.chunkRatio
	}
	if entries*8 > int64(bat.length) || entries*8 > vhdxMaxBAT {
		return corrupt("BAT region of %d bytes holds fewer than the %d entries a %d-byte disk needs", bat.length, entries, vm.size)
	}
	if md.hasParent {
		m.subformat = "differencing"
		parent, linkage, err := o.vhdxParentPath(path, md.parent)
		if err != nil {
			return nil, imageMeta{}, err
		}
		m.parent, m.parentFormat = parent, FormatVHDX
		m.checkParent = func(p *image) error {
			if p.format != FormatVHDX || !linkage(p.ident) {
				return corruptf(FormatVHDX, path, "parent %s has data write GUID %s, not the parent_linkage this differencing disk was made from: the parent changed", parent, p.ident)
			}
			return nil
		}
	}
	if !o.probe {
		raw := make([]byte, entries*8)
		if err := readPadded(f, raw, int64(bat.off)); err != nil {
			return ioFail("read BAT", err)
		}
		vm.bat = make([]uint64, entries)
		fixed := true
		for i := range vm.bat {
			e := binary.LittleEndian.Uint64(raw[i*8:])
			vm.bat[i] = e
			if err := vm.checkEntry(int64(i), e); err != nil {
				return nil, imageMeta{}, err
			}
			if (int64(i)+1)%(vm.chunkRatio+1) != 0 && e&7 != vhdxBlockFullyPresent {
				fixed = false
			}
		}
		if fixed && !md.hasParent {
			m.subformat = "fixed"
		}
	}
	im := &image{format: FormatVHDX, path: path, size: vm.size, m: vm, closers: []io.Closer{c}}
	return im, m, nil
}

// vhdxParentPath finds the parent named by a differencing disk's locator
// and returns a check for the parent's data write GUID.
func (o *opener) vhdxParentPath(path string, loc map[string]string) (string, func(string) bool, error) {
	var names []string
	for _, k := range []string{"relative_path", "volume_path", "absolute_win32_path"} {
		if v := loc[k]; v != "" {
			names = append(names, v)
		}
	}
	if len(names) == 0 {
		return "", nil, corruptf(FormatVHDX, path, "parent locator names no parent path")
	}
	var candidates []string
	for _, n := range names {
		n = strings.ReplaceAll(n, `\`, "/")
		if len(n) >= 2 && n[1] == ':' || strings.HasPrefix(n, "//") {
			// A Windows drive or volume path: usable as is only on Windows;
			// elsewhere look for the parent's file name in the base directory.
			if runtime.GOOS == "windows" {
				candidates = append(candidates, n)
			}
			candidates = append(candidates, o.resolve(path, n[strings.LastIndex(n, "/")+1:]))
			continue
		}
		candidates = append(candidates, o.resolve(path, strings.TrimPrefix(n, "./")))
	}
	chosen := candidates[0]
	for _, cnd := range candidates {
		if fileExists(cnd) {
			chosen = cnd
			break
		}
	}
	links := []string{loc["parent_linkage"], loc["parent_linkage2"]}
	check := func(ident string) bool {
		for _, l := range links {
			if l == "" {
				continue
			}
			g, err := parseGUID(l)
			if err == nil && strings.EqualFold(g.String(), ident) {
				return true
			}
		}
		return false
	}
	return chosen, check, nil
}

// vhdxMapper maps guest offsets through the BAT.
type vhdxMapper struct {
	f          fileReader
	path       string
	blockSize  int64
	sector     int64
	chunkRatio int64
	size       int64
	diff       bool
	bat        []uint64

	mu      sync.Mutex
	bitmaps map[int64][]byte // sector bitmap block file offset -> bitmap
}

func vhdxFileOff(e uint64) int64 { return int64(e>>20) << 20 }

// checkEntry validates one BAT entry against the file.
func (m *vhdxMapper) checkEntry(i int64, e uint64) error {
	state := e & 7
	isBitmap := (i+1)%(m.chunkRatio+1) == 0
	switch {
	case isBitmap && state == vhdxSBBlockPresent:
		if off := vhdxFileOff(e); off < vhdxHeaderArea || off+vhdxSectorBitmapSize > m.f.Size() {
			return corruptf(FormatVHDX, m.path, "sector bitmap block %d at %d outside the file", i, off)
		}
	case isBitmap && state != vhdxSBBlockNotPresent:
		return corruptf(FormatVHDX, m.path, "sector bitmap entry %d has state %d", i, state)
	case state == vhdxBlockFullyPresent || state == vhdxBlockPartiallyPresent:
		if state == vhdxBlockPartiallyPresent && !m.diff {
			return corruptf(FormatVHDX, m.path, "BAT entry %d partially present in a disk without a parent", i)
		}
		if off := vhdxFileOff(e); off < vhdxHeaderArea || off+m.blockSize > m.f.Size() {
			return corruptf(FormatVHDX, m.path, "payload block %d at file offset %d outside the %d-byte file", i, off, m.f.Size())
		}
	case state == vhdxBlockNotPresent, state == vhdxBlockUndefined, state == vhdxBlockZero, state == vhdxBlockUnmapped:
	default:
		return corruptf(FormatVHDX, m.path, "BAT entry %d has unknown state %d", i, state)
	}
	return nil
}

func (m *vhdxMapper) entry(block int64) uint64 { return m.bat[block+block/m.chunkRatio] }

// blockKind is how a whole block reads, for the states that do not need
// a sector bitmap.
func (m *vhdxMapper) blockKind(e uint64) segKind {
	switch e & 7 {
	case vhdxBlockFullyPresent:
		return segData
	case vhdxBlockNotPresent:
		if m.diff {
			return segParent
		}
	}
	// UNDEFINED, ZERO, UNMAPPED: no data; a trimmed block reads zeros.
	return segZero
}

func (m *vhdxMapper) mapAt(off, want int64) (segment, error) {
	bi, in := off/m.blockSize, off%m.blockSize
	e := m.entry(bi)
	if e&7 == vhdxBlockPartiallyPresent {
		return m.mapPartial(bi, in, e)
	}
	kind := m.blockKind(e)
	length := m.blockSize - in
	base := vhdxFileOff(e)
	for next := bi + 1; length < want && next*m.blockSize < m.size; next++ {
		e2 := m.entry(next)
		if e2&7 == vhdxBlockPartiallyPresent || m.blockKind(e2) != kind ||
			(kind == segData && vhdxFileOff(e2) != base+(next-bi)*m.blockSize) {
			break
		}
		length += m.blockSize
	}
	seg := segment{kind: kind, length: length}
	if kind == segData {
		seg.file, seg.off, seg.refine = m.f, base+in, true
	}
	return seg, nil
}

// mapPartial maps inside a partially present block of a differencing
// disk: a set bit in the sector bitmap means this file holds the sector.
func (m *vhdxMapper) mapPartial(bi, in int64, e uint64) (segment, error) {
	chunk := bi / m.chunkRatio
	sb := m.bat[chunk*(m.chunkRatio+1)+m.chunkRatio]
	if sb&7 != vhdxSBBlockPresent {
		return segment{}, corruptf(FormatVHDX, m.path, "partially present block %d without a sector bitmap", bi)
	}
	bm, err := m.bitmap(vhdxFileOff(sb))
	if err != nil {
		return segment{}, err
	}
	perBlock := m.blockSize / m.sector
	first := (bi%m.chunkRatio)*perBlock + in/m.sector
	bit := func(s int64) bool { return bm[s/8]&(1<<(s%8)) != 0 }
	set := bit(first)
	end := (bi%m.chunkRatio + 1) * perBlock
	s := first + 1
	for s < end && bit(s) == set {
		s++
	}
	length := (s-first)*m.sector - in%m.sector
	if !set {
		return segment{kind: segParent, length: length}, nil
	}
	return segment{kind: segData, length: length, file: m.f, off: vhdxFileOff(e) + in}, nil
}

func (m *vhdxMapper) bitmap(off int64) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b, ok := m.bitmaps[off]; ok {
		return b, nil
	}
	b := make([]byte, vhdxSectorBitmapSize)
	if err := readPadded(m.f, b, off); err != nil {
		return nil, ioError(FormatVHDX, m.path, "read sector bitmap", err)
	}
	if len(m.bitmaps) >= 16 {
		clear(m.bitmaps)
	}
	m.bitmaps[off] = b
	return b, nil
}
