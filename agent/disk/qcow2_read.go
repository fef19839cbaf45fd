package disk

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// qcow2L2CacheTables bounds the L2 tables kept in memory per image
// (128 tables of 64 KiB = 8 MiB with the default cluster size).
const qcow2L2CacheTables = 128

func (o *opener) openQCOW2(c *container) (*image, imageMeta, error) {
	fail := func(err error) (*image, imageMeta, error) {
		var he *qcow2HeaderError
		if errors.As(err, &he) {
			return nil, imageMeta{}, &FormatError{Format: FormatQCOW2, Path: c.path, Reason: he.reason, Err: he.kind}
		}
		return nil, imageMeta{}, ioError(FormatQCOW2, c.path, "read header", err)
	}
	first := make([]byte, min(c.size, 512))
	if err := readPadded(c, first, 0); err != nil {
		return fail(err)
	}
	if len(first) >= qcow2V2HeaderLen {
		if bits := binary.BigEndian.Uint32(first[20:]); bits >= qcow2MinClusterBits && bits <= qcow2MaxClusterBits {
			first = make([]byte, min(c.size, int64(1)<<bits))
			if err := readPadded(c, first, 0); err != nil {
				return fail(err)
			}
		}
	}
	h, err := parseQCOW2Header(first, c.size)
	if err != nil {
		return fail(err)
	}
	if h.incompat&qcow2IncompatDirty != 0 && !o.opts.AllowDirty && !o.probe {
		return nil, imageMeta{}, dirtyf(FormatQCOW2, c.path,
			"image is marked dirty (in use with lazy refcounts, or not closed cleanly); close it in its hypervisor or run qemu-img check -r all")
	}
	m := imageMeta{subformat: fmt.Sprintf("v%d", h.version)}
	if h.backingName != "" {
		m.parent = o.resolve(c.path, h.backingName)
		m.parentFormat = qemuFormat(h.backingFormat)
	}
	qm := &qcow2Mapper{
		f: c, path: c.path, h: h,
		clusterBits: int64(h.clusterBits), clusterSize: int64(1) << h.clusterBits,
		l2Entries: int64(1) << h.clusterBits / 8, size: int64(h.size),
		cache: map[int64][]uint64{},
	}
	if !o.probe {
		if err := qm.loadL1(); err != nil {
			return nil, imageMeta{}, err
		}
	}
	if h.compressionType == qcow2CompressionZstd {
		qm.decode = decodeZstd
	} else {
		qm.decode = decodeDeflate
	}
	im := &image{format: FormatQCOW2, path: c.path, size: int64(h.size), m: qm, closers: []io.Closer{c}}
	return im, m, nil
}

// qcow2Mapper maps guest offsets through the L1 and L2 tables.
type qcow2Mapper struct {
	f           fileReader
	path        string
	h           *qcow2Header
	clusterBits int64
	clusterSize int64
	l2Entries   int64
	size        int64
	l1          []uint64
	decode      func(dst, src []byte) error

	mu    sync.Mutex
	cache map[int64][]uint64 // L2 table offset -> entries
	order []int64            // insertion order, for eviction
}

func (m *qcow2Mapper) loadL1() error {
	l2Cover := m.clusterSize * m.l2Entries
	n := (m.size + l2Cover - 1) / l2Cover
	buf := make([]byte, n*8)
	ok, err := readExact(m.f, buf, int64(m.h.l1Off))
	if err != nil {
		return ioError(FormatQCOW2, m.path, "read L1 table", err)
	}
	if !ok {
		return corruptf(FormatQCOW2, m.path, "L1 table beyond end of file")
	}
	m.l1 = make([]uint64, n)
	for i := range m.l1 {
		m.l1[i] = binary.BigEndian.Uint64(buf[i*8:])
	}
	return nil
}

// l2 returns the L2 table at off, from the cache or the file.
func (m *qcow2Mapper) l2(off int64) ([]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t, ok := m.cache[off]; ok {
		return t, nil
	}
	if off%m.clusterSize != 0 {
		return nil, corruptf(FormatQCOW2, m.path, "L2 table offset %#x not cluster aligned", off)
	}
	buf := make([]byte, m.clusterSize)
	ok, err := readExact(m.f, buf, off)
	if err != nil {
		return nil, ioError(FormatQCOW2, m.path, "read L2 table", err)
	}
	if !ok {
		return nil, corruptf(FormatQCOW2, m.path, "L2 table at %#x beyond end of file (%d bytes)", off, m.f.Size())
	}
	t := make([]uint64, m.l2Entries)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(buf[i*8:])
	}
	if len(m.order) >= qcow2L2CacheTables {
		delete(m.cache, m.order[0])
		m.order = m.order[1:]
	}
	m.cache[off] = t
	m.order = append(m.order, off)
	return t, nil
}

// classify turns an L2 entry into a segment kind and host offset.
func (m *qcow2Mapper) classify(e uint64) (segKind, int64, error) {
	if e&qcow2FlagCompressed != 0 {
		return segCompressed, 0, nil
	}
	host := int64(e & qcow2OffsetMask)
	if m.h.version >= 3 && e&qcow2FlagZero != 0 {
		return segZero, 0, nil
	}
	if host == 0 {
		return segParent, 0, nil
	}
	if host%m.clusterSize != 0 {
		return 0, 0, corruptf(FormatQCOW2, m.path, "data cluster offset %#x not cluster aligned", host)
	}
	if host+m.clusterSize > m.f.Size() {
		return 0, 0, corruptf(FormatQCOW2, m.path, "data cluster at %#x beyond end of file (%d bytes): truncated image", host, m.f.Size())
	}
	return segData, host, nil
}

func (m *qcow2Mapper) mapAt(off, want int64) (segment, error) {
	ci := off >> m.clusterBits
	l1i, l2i := ci/m.l2Entries, ci%m.l2Entries
	inCluster := off & (m.clusterSize - 1)
	if l1i >= int64(len(m.l1)) {
		return segment{}, corruptf(FormatQCOW2, m.path, "guest offset %d beyond the L1 table", off)
	}
	l2Off := int64(m.l1[l1i] & qcow2OffsetMask)
	if l2Off == 0 {
		length := (l1i+1)*m.l2Entries*m.clusterSize - off
		for next := l1i + 1; next < int64(len(m.l1)) && length < want && m.l1[next]&qcow2OffsetMask == 0; next++ {
			length += m.l2Entries * m.clusterSize
		}
		return segment{kind: segParent, length: length}, nil
	}
	if l2Off >= m.f.Size() {
		return segment{}, corruptf(FormatQCOW2, m.path, "L2 table at %#x beyond end of file", l2Off)
	}
	t, err := m.l2(l2Off)
	if err != nil {
		return segment{}, err
	}
	e := t[l2i]
	kind, host, err := m.classify(e)
	if err != nil {
		return segment{}, err
	}
	if kind == segCompressed {
		x := 62 - (m.clusterBits - 8)
		coff := int64(e & (1<<x - 1))
		sectors := int64((e>>x)&(1<<(m.clusterBits-8)-1)) + 1
		n := sectors*512 - coff&511
		if coff >= m.f.Size() || coff <= 0 {
			return segment{}, corruptf(FormatQCOW2, m.path, "compressed cluster at %#x beyond end of file", coff)
		}
		start := ci << m.clusterBits
		return segment{kind: segCompressed, length: m.clusterSize - inCluster, comp: &compressed{
			file: m.f, off: coff, n: n, guestStart: start, size: m.clusterSize, decode: m.decode}}, nil
	}
	length := m.clusterSize - inCluster
	// Extend over following entries of the same kind (and contiguous host
	// clusters for data) until want is covered or the table ends.
	for j := l2i + 1; j < m.l2Entries && length < want; j++ {
		k2, h2, err := m.classify(t[j])
		if err != nil || k2 != kind || (kind == segData && h2 != host+(j-l2i)*m.clusterSize) {
			break
		}
		length += m.clusterSize
	}
	seg := segment{kind: kind, length: length}
	if kind == segData {
		seg.file, seg.off = m.f, host+inCluster
	}
	return seg, nil
}

func decodeDeflate(dst, src []byte) error {
	r := flate.NewReader(bytes.NewReader(src))
	defer r.Close()
	if _, err := io.ReadFull(r, dst); err != nil {
		return fmt.Errorf("deflate: %w", err)
	}
	return nil
}

func decodeZstd(dst, src []byte) error {
	d, err := zstd.NewReader(bytes.NewReader(src), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
	if err != nil {
		return err
	}
	defer d.Close()
	if _, err := io.ReadFull(d, dst); err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	return nil
}
