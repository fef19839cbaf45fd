package disk

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
)

func (o *opener) openVMDK(c *container) (*image, imageMeta, error) {
	path := c.path
	corrupt := func(format string, args ...any) (*image, imageMeta, error) {
		return nil, imageMeta{}, corruptf(FormatVMDK, path, format, args...)
	}
	head := make([]byte, min(c.size, vmdkSectorSize))
	if err := readPadded(c, head, 0); err != nil {
		return nil, imageMeta{}, ioError(FormatVMDK, path, "read header", err)
	}
	if strings.HasPrefix(string(head), vmdkCOWDMagic) {
		return nil, imageMeta{}, unsupportedf(FormatVMDK, path, "ESX vmfsSparse (COWD) extents are not supported")
	}

	var desc *vmdkDescriptor
	var self *vmdkSparse // the sparse extent in this very file, if any
	if strings.HasPrefix(string(head), vmdkSparseMagic) {
		s, err := openVMDKSparse(c, o.probe)
		if err != nil {
			return vmdkOpenError(path, err)
		}
		self = s
		if s.h.descOff == 0 || s.h.descSize == 0 {
			// An extent file opened on its own: one sparse extent, no descriptor.
			desc = &vmdkDescriptor{createType: "monolithicSparse", cid: vmdkNoParent, parentCID: vmdkNoParent,
				extents: []vmdkExtentDesc{{access: "RW", sectors: int64(s.h.capacity), typ: "SPARSE", file: filepath.Base(path)}}}
		} else {
			if s.h.descSize > vmdkMaxDescriptorFile/vmdkSectorSize {
				return corrupt("embedded descriptor of %d sectors too large", s.h.descSize)
			}
			text := make([]byte, s.h.descSize*vmdkSectorSize)
			if ok, err := readExact(c, text, int64(s.h.descOff)*vmdkSectorSize); err != nil {
				return nil, imageMeta{}, ioError(FormatVMDK, path, "read descriptor", err)
			} else if !ok {
				return corrupt("embedded descriptor beyond end of file")
			}
			if desc, err = parseVMDKDescriptor(string(text)); err != nil {
				return corrupt("descriptor: %v", err)
			}
		}
	} else {
		if c.size > vmdkMaxDescriptorFile {
			return corrupt("not a sparse extent and too large (%d bytes) for a descriptor file", c.size)
		}
		text := make([]byte, c.size)
		if err := readPadded(c, text, 0); err != nil {
			return nil, imageMeta{}, ioError(FormatVMDK, path, "read descriptor", err)
		}
		var err error
		if desc, err = parseVMDKDescriptor(string(text)); err != nil {
			return corrupt("descriptor: %v", err)
		}
	}

	switch desc.createType {
	case "vmfsSparse", "seSparse", "vmfsRaw", "vmfsRawDeviceMap", "vmfsPassthroughRawDeviceMap", "fullDevice", "partitionedDevice":
		return nil, imageMeta{}, unsupportedf(FormatVMDK, path, "createType %s is not supported", desc.createType)
	}
	vm := &vmdkMapper{path: path}
	im := &image{format: FormatVMDK, path: path, m: vm}
	// On error the caller closes c; closeAll closes the other extent files.
	closeAll := func() {
		for _, cl := range im.closers {
			cl.Close()
		}
	}
	selfUsed := false
	var start int64
	for i, e := range desc.extents {
		ext := vmdkExtent{start: start, size: e.sectors * vmdkSectorSize}
		switch e.access {
		case "RW", "RDONLY":
		default:
			closeAll()
			return nil, imageMeta{}, unsupportedf(FormatVMDK, path, "extent %d has access %s", i, e.access)
		}
		switch e.typ {
		case "ZERO":
			ext.zero = true
		case "FLAT", "VMFS", "SPARSE":
			var f fileReader
			var cont *container
			// A sparse file with an embedded descriptor is its own single
			// extent whatever name the descriptor gives (as qemu reads it):
			// a renamed copy or a clone must not read the original.
			if self != nil && !selfUsed && e.typ == "SPARSE" && len(desc.extents) == 1 {
				selfUsed = true
				cont = c
			} else {
				ep := o.resolve(path, e.file)
				var err error
				if cont, err = o.openFile(ep); err != nil {
					closeAll()
					return nil, imageMeta{}, &FormatError{Format: FormatVMDK, Path: path, Reason: fmt.Sprintf("open extent %d", i), Err: err}
				}
				im.closers = append(im.closers, cont)
			}
			f = cont
			if e.typ == "SPARSE" {
				var s *vmdkSparse
				if cont == c {
					s = self
				} else {
					var err error
					if s, err = openVMDKSparse(f, o.probe); err != nil {
						closeAll()
						return vmdkOpenError(cont.path, err)
					}
				}
				if s.size < ext.size {
					closeAll()
					return corrupt("extent %d: sparse file holds %d bytes, descriptor says %d", i, s.size, ext.size)
				}
				ext.sparse = s
			} else {
				if need := (e.offset + e.sectors) * vmdkSectorSize; cont.size < need {
					closeAll()
					return corrupt("extent %d: flat file %s holds %d bytes, the descriptor needs %d: truncated extent", i, cont.path, cont.size, need)
				}
				ext.flat = &linearMapper{file: f, base: e.offset * vmdkSectorSize, size: ext.size}
			}
		default:
			closeAll()
			return nil, imageMeta{}, unsupportedf(FormatVMDK, path, "extent %d has type %s (supported: SPARSE, FLAT, VMFS, ZERO)", i, e.typ)
		}
		vm.extents = append(vm.extents, ext)
		start += ext.size
	}
	im.closers = append(im.closers, c)
	im.size = start
	m := imageMeta{subformat: desc.createType, ident: fmt.Sprintf("%08x", desc.cid)}
	if desc.parentCID != vmdkNoParent {
		if desc.parentHint == "" {
			im.closers = im.closers[:len(im.closers)-1]
			closeAll()
			return corrupt("delta disk (parentCID %08x) without parentFileNameHint", desc.parentCID)
		}
		m.parent, m.parentFormat = o.resolve(path, strings.ReplaceAll(desc.parentHint, `\`, "/")), FormatVMDK
		want := fmt.Sprintf("%08x", desc.parentCID)
		parent := m.parent
		m.checkParent = func(p *image) error {
			if p.ident != want {
				return corruptf(FormatVMDK, path, "parent %s has CID %s, the delta disk expects %s: the parent changed", parent, p.ident, want)
			}
			return nil
		}
	}
	return im, m, nil
}

// vmdkOpenError turns a sparse-extent problem into a FormatError.
func vmdkOpenError(path string, err error) (*image, imageMeta, error) {
	if u, ok := err.(*vmdkUnsupported); ok {
		return nil, imageMeta{}, unsupportedf(FormatVMDK, path, "%s", u.Error())
	}
	return nil, imageMeta{}, corruptf(FormatVMDK, path, "sparse extent: %v", err)
}

// vmdkExtent is one extent of the disk, in guest bytes.
type vmdkExtent struct {
	start, size int64
	zero        bool
	flat        *linearMapper
	sparse      *vmdkSparse
}

// vmdkMapper maps guest offsets to the extent that holds them.
type vmdkMapper struct {
	path    string
	extents []vmdkExtent
}

func (m *vmdkMapper) mapAt(off, want int64) (segment, error) {
	i := sort.Search(len(m.extents), func(i int) bool { return m.extents[i].start+m.extents[i].size > off })
	if i == len(m.extents) {
		return segment{}, corruptf(FormatVMDK, m.path, "guest offset %d beyond the extents", off)
	}
	e := m.extents[i]
	in := off - e.start
	left := e.size - in
	var seg segment
	var err error
	switch {
	case e.zero:
		seg = segment{kind: segZero, length: left}
	case e.flat != nil:
		seg, err = e.flat.mapAt(in, want)
	default:
		seg, err = e.sparse.mapAt(in, want)
		if err != nil {
			return segment{}, corruptf(FormatVMDK, m.path, "extent %d (%s): %v", i, e.sparse.path, err)
		}
		if seg.comp != nil {
			seg.comp.guestStart += e.start
		}
	}
	if err != nil {
		return segment{}, err
	}
	seg.length = min(seg.length, left)
	return seg, nil
}
