package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// maxChainDepth bounds parent/backing chains, so that a loop of images
// naming each other is refused instead of followed forever.
const maxChainDepth = 16

// Open opens a disk image or block device as the guest sees it.
func Open(path string, opts OpenOptions) (Source, error) {
	o := &opener{opts: opts}
	s, _, err := o.open(path, opts.Format)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Probe reads the headers of an image (and of its parents) without
// loading its tables or replaying logs.
func Probe(path string) (Info, error) {
	o := &opener{probe: true}
	s, m, err := o.open(path, "")
	if err != nil {
		return Info{}, err
	}
	defer s.Close()
	info := Info{Path: path, Format: s.Format(), Subformat: m.subformat, VirtualSize: s.Size(),
		FileSize: m.fileSize, BlockDevice: m.block}
	next, nextFormat := m.parent, m.parentFormat
	for depth := 0; next != ""; depth++ {
		if depth >= maxChainDepth {
			return info, unsupportedf(info.Format, path, "backing chain deeper than %d", maxChainDepth)
		}
		info.Backing = append(info.Backing, next)
		ps, pm, err := o.open(next, nextFormat)
		if err != nil {
			return info, err
		}
		ps.Close()
		next, nextFormat = pm.parent, pm.parentFormat
	}
	return info, nil
}

// opener carries the options through a chain of images.
type opener struct {
	opts  OpenOptions
	probe bool // headers only: no tables, no log replay, no parents
	depth int
}

// imageMeta is what a format reader reports besides the image itself.
type imageMeta struct {
	subformat    string
	fileSize     int64
	block        bool
	parent       string // resolved path of the parent/backing file, "" if none
	parentFormat Format // "" = detect
	// checkParent, if set, verifies that the opened parent is the one the
	// child was made from (VHDX DataWriteGuid, VMDK CID).
	checkParent func(parent *image) error
	ident       string // what a child's checkParent compares against
}

// resolve turns a name found inside an image into a path.
func (o *opener) resolve(imagePath, name string) string {
	name = filepath.FromSlash(name)
	if filepath.IsAbs(name) {
		return name
	}
	dir := o.opts.BaseDir
	if dir == "" {
		dir = filepath.Dir(imagePath)
	}
	return filepath.Join(dir, name)
}

// openFile opens a further file of the same image (a VMDK extent).
func (o *opener) openFile(path string) (*container, error) {
	return openContainer(path, o.opts.Stats)
}

func (o *opener) open(path string, format Format) (*image, imageMeta, error) {
	if o.depth > maxChainDepth {
		return nil, imageMeta{}, unsupportedf(format, path, "backing chain deeper than %d", maxChainDepth)
	}
	c, err := openContainer(path, o.opts.Stats)
	if err != nil {
		return nil, imageMeta{}, err
	}
	if format == "" {
		if format, err = detect(c); err != nil {
			c.Close()
			return nil, imageMeta{}, ioError(FormatRaw, path, "detect format", err)
		}
	}
	var im *image
	var m imageMeta
	switch format {
	case FormatRaw:
		im = newLinearImage(FormatRaw, c, c, c.size)
	case FormatQCOW2:
		im, m, err = o.openQCOW2(c)
	case FormatVHDX:
		im, m, err = o.openVHDX(c)
	case FormatVHD:
		im, m, err = o.openVHD(c)
	case FormatVMDK:
		im, m, err = o.openVMDK(c)
	default:
		err = unsupportedf(format, path, "unknown format %q", format)
	}
	if err != nil {
		c.Close()
		return nil, imageMeta{}, err
	}
	m.fileSize, m.block = c.size, c.block
	if m.parent == "" || o.probe {
		return im, m, nil
	}
	po := &opener{opts: o.opts, depth: o.depth + 1}
	parent, pm, err := po.open(m.parent, m.parentFormat)
	if err != nil {
		im.Close()
		var fe *FormatError
		if errors.As(err, &fe) {
			return nil, imageMeta{}, err
		}
		return nil, imageMeta{}, &FormatError{Format: format, Path: path, Reason: "open parent " + m.parent, Err: err}
	}
	if m.checkParent != nil {
		parent.ident = pm.ident
		if err := m.checkParent(parent); err != nil {
			parent.Close()
			im.Close()
			return nil, imageMeta{}, err
		}
	}
	im.parent = parent
	return im, m, nil
}

// detect finds the format by magic numbers. A fixed VHD is a raw image
// with a 512-byte "conectix" footer, so the end of the file is looked at
// too.
func detect(c *container) (Format, error) {
	var hdr [512]byte
	n, err := c.ReadAt(hdr[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	h := hdr[:n]
	switch {
	case bytes.HasPrefix(h, []byte(qcow2Magic)):
		return FormatQCOW2, nil
	case bytes.HasPrefix(h, []byte(vhdxSignature)):
		return FormatVHDX, nil
	case bytes.HasPrefix(h, []byte(vmdkSparseMagic)), bytes.HasPrefix(h, []byte(vmdkCOWDMagic)):
		return FormatVMDK, nil
	case bytes.HasPrefix(h, []byte(vhdCookie)):
		return FormatVHD, nil
	case c.size < vmdkMaxDescriptorFile && looksLikeVMDKDescriptor(h):
		return FormatVMDK, nil
	}
	if c.size >= 2*vhdFooterSize {
		var foot [vhdFooterSize]byte
		if _, err := c.ReadAt(foot[:], c.size-vhdFooterSize); err != nil && !errors.Is(err, io.EOF) {
			return "", err
		}
		if bytes.HasPrefix(foot[:], []byte(vhdCookie)) && vhdChecksum(foot[:], 64) == binary.BigEndian.Uint32(foot[64:]) {
			return FormatVHD, nil
		}
	}
	return FormatRaw, nil
}

// looksLikeVMDKDescriptor recognises a text descriptor file.
func looksLikeVMDKDescriptor(h []byte) bool {
	s := string(h)
	return strings.Contains(s, "# Disk DescriptorFile") ||
		(strings.Contains(s, "createType=") && strings.Contains(s, "version="))
}

// newLinearImage maps the guest linearly onto a file: raw images, fixed
// VHD. Holes in the file are holes for the guest.
func newLinearImage(f Format, c io.Closer, r fileReader, size int64) *image {
	return &image{format: f, path: r.Path(), size: size, m: &linearMapper{file: r, size: size}, closers: []io.Closer{c}}
}

type linearMapper struct {
	file fileReader
	base int64
	size int64
}

func (m *linearMapper) mapAt(off, _ int64) (segment, error) {
	return segment{kind: segData, length: m.size - off, file: m.file, off: m.base + off, refine: true}, nil
}

// limitedFile shows only the first size bytes of a file (a fixed VHD
// without its footer), so that the footer never reads as guest data.
type limitedFile struct {
	fileReader
	size int64
}

func (l limitedFile) Size() int64 { return l.size }

func (l limitedFile) dataRanges(off, n int64) ([]Extent, error) {
	if off+n > l.size {
		n = l.size - off
	}
	if n <= 0 {
		return nil, nil
	}
	return l.fileReader.dataRanges(off, n)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
