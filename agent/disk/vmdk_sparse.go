package disk

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
)

// Hosted sparse extents (monolithicSparse, twoGbMaxExtentSparse,
// streamOptimized). All fields are little-endian; units are sectors.
const (
	vmdkSectorSize       = 512
	vmdkFlagNewlineTest  = 1 << 0
	vmdkFlagZeroGrain    = 1 << 2
	vmdkFlagCompressed   = 1 << 16
	vmdkFlagMarkers      = 1 << 17
	vmdkGDAtEnd          = 0xffffffffffffffff
	vmdkCompressDeflate  = 1
	vmdkGTEZeroed        = 1
	vmdkMaxGrainSectors  = 1 << 18 // 128 MiB
	vmdkMaxGTEs          = 1 << 16
	vmdkMaxCapacity      = 1 << 42 // sectors: 2 PiB
	vmdkGrainMarkerBytes = 12      // lba u64 + size u32
	vmdkGTCacheTables    = 256
)

// vmdkSparseHeader is the 512-byte header of a hosted sparse extent.
type vmdkSparseHeader struct {
	version      uint32
	flags        uint32
	capacity     uint64
	grainSize    uint64
	descOff      uint64
	descSize     uint64
	gtes         uint32
	rgdOff       uint64
	gdOff        uint64
	overhead     uint64
	unclean      bool
	compressAlgo uint16
}

func parseVMDKSparseHeader(b []byte) (*vmdkSparseHeader, error) {
	le := binary.LittleEndian
	if len(b) < vmdkSectorSize || string(b[:4]) != vmdkSparseMagic {
		return nil, fmt.Errorf("sparse header truncated or bad magic")
	}
	h := &vmdkSparseHeader{version: le.Uint32(b[4:]), flags: le.Uint32(b[8:]), capacity: le.Uint64(b[12:]),
		grainSize: le.Uint64(b[20:]), descOff: le.Uint64(b[28:]), descSize: le.Uint64(b[36:]),
		gtes: le.Uint32(b[44:]), rgdOff: le.Uint64(b[48:]), gdOff: le.Uint64(b[56:]), overhead: le.Uint64(b[64:]),
		unclean: b[72] != 0, compressAlgo: le.Uint16(b[77:])}
	if h.version < 1 || h.version > 3 {
		return nil, &vmdkUnsupported{fmt.Sprintf("sparse extent version %d", h.version)}
	}
	if h.flags&vmdkFlagNewlineTest != 0 && (b[73] != '\n' || b[74] != ' ' || b[75] != '\r' || b[76] != '\n') {
		return nil, fmt.Errorf("newline check bytes damaged (file transferred in text mode?)")
	}
	if h.grainSize == 0 || h.grainSize&(h.grainSize-1) != 0 || h.grainSize > vmdkMaxGrainSectors {
		return nil, fmt.Errorf("grain size %d sectors invalid", h.grainSize)
	}
	if h.gtes == 0 || h.gtes > vmdkMaxGTEs {
		return nil, fmt.Errorf("%d grain table entries per table invalid", h.gtes)
	}
	if h.capacity > vmdkMaxCapacity {
		return nil, fmt.Errorf("capacity %d sectors invalid", h.capacity)
	}
	if h.flags&vmdkFlagCompressed != 0 && h.compressAlgo != vmdkCompressDeflate {
		return nil, &vmdkUnsupported{fmt.Sprintf("grain compression algorithm %d", h.compressAlgo)}
	}
	return h, nil
}

// vmdkUnsupported marks a header problem that is a feature we do not read.
type vmdkUnsupported struct{ what string }

func (e *vmdkUnsupported) Error() string { return e.what + " not supported" }

// vmdkSparse maps one sparse extent's sectors through its grain directory
// and grain tables.
type vmdkSparse struct {
	f          fileReader
	path       string
	h          *vmdkSparseHeader
	grainBytes int64
	gtCover    int64 // guest bytes one grain table maps
	gd         []uint32
	size       int64

	mu    sync.Mutex
	cache map[int64][]uint32
	order []int64
}

// openVMDKSparse reads a sparse extent's header (or, for streamOptimized,
// its footer) and grain directory.
func openVMDKSparse(f fileReader, probe bool) (*vmdkSparse, error) {
	hb := make([]byte, vmdkSectorSize)
	if ok, err := readExact(f, hb, 0); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("file of %d bytes has no sparse header", f.Size())
	}
	h, err := parseVMDKSparseHeader(hb)
	if err != nil {
		return nil, err
	}
	if h.gdOff == vmdkGDAtEnd {
		// streamOptimized: the real header is the footer, the second of
		// the last three sectors (footer marker, footer, end-of-stream).
		if f.Size() < 3*vmdkSectorSize {
			return nil, fmt.Errorf("stream-optimized file without a footer")
		}
		if ok, err := readExact(f, hb, f.Size()-2*vmdkSectorSize); err != nil || !ok {
			return nil, fmt.Errorf("read footer: %v", err)
		}
		if h, err = parseVMDKSparseHeader(hb); err != nil {
			return nil, fmt.Errorf("footer: %w", err)
		}
		if h.gdOff == vmdkGDAtEnd {
			return nil, fmt.Errorf("footer has no grain directory offset")
		}
	}
	s := &vmdkSparse{f: f, path: f.Path(), h: h, grainBytes: int64(h.grainSize) * vmdkSectorSize,
		size: int64(h.capacity) * vmdkSectorSize, cache: map[int64][]uint32{}}
	s.gtCover = s.grainBytes * int64(h.gtes)
	n := (s.size + s.gtCover - 1) / s.gtCover
	gdBytes := n * 4
	if h.gdOff > uint64(f.Size())/vmdkSectorSize || int64(h.gdOff)*vmdkSectorSize+gdBytes > f.Size() {
		return nil, fmt.Errorf("grain directory at sector %d (%d entries) beyond end of file", h.gdOff, n)
	}
	if probe {
		return s, nil
	}
	raw := make([]byte, gdBytes)
	if err := readPadded(f, raw, int64(h.gdOff)*vmdkSectorSize); err != nil {
		return nil, err
	}
	s.gd = make([]uint32, n)
	gtBytes := int64(h.gtes) * 4
	for i := range s.gd {
		e := binary.LittleEndian.Uint32(raw[i*4:])
		if e != 0 && int64(e)*vmdkSectorSize+gtBytes > f.Size() {
			return nil, fmt.Errorf("grain directory entry %d points to a grain table at sector %d beyond end of file", i, e)
		}
		s.gd[i] = e
	}
	return s, nil
}

func (s *vmdkSparse) gt(sector int64) ([]uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.cache[sector]; ok {
		return t, nil
	}
	raw := make([]byte, int64(s.h.gtes)*4)
	if err := readPadded(s.f, raw, sector*vmdkSectorSize); err != nil {
		return nil, err
	}
	t := make([]uint32, s.h.gtes)
	for i := range t {
		t[i] = binary.LittleEndian.Uint32(raw[i*4:])
	}
	if len(s.order) >= vmdkGTCacheTables {
		delete(s.cache, s.order[0])
		s.order = s.order[1:]
	}
	s.cache[sector] = t
	s.order = append(s.order, sector)
	return t, nil
}

// grainKind classifies a grain table entry.
func (s *vmdkSparse) grainKind(e uint32) (segKind, error) {
	switch {
	case e == 0:
		return segParent, nil
	case e == vmdkGTEZeroed && s.h.flags&vmdkFlagZeroGrain != 0:
		return segZero, nil
	case int64(e)*vmdkSectorSize >= s.f.Size():
		return 0, fmt.Errorf("grain table entry points to sector %d beyond end of file (%d bytes)", e, s.f.Size())
	case s.h.flags&vmdkFlagCompressed == 0 && uint64(e) < s.h.overhead:
		return 0, fmt.Errorf("grain table entry points to sector %d inside the metadata (first data sector %d)", e, s.h.overhead)
	case s.h.flags&vmdkFlagCompressed != 0:
		return segCompressed, nil
	case int64(e)*vmdkSectorSize+s.grainBytes > s.f.Size():
		return 0, fmt.Errorf("grain at sector %d runs past the end of the file (%d bytes): truncated extent", e, s.f.Size())
	}
	return segData, nil
}

// mapAt maps an offset inside this extent; errors are plain (the caller
// adds format and path).
func (s *vmdkSparse) mapAt(off, want int64) (segment, error) {
	gdi := off / s.gtCover
	in := off % s.grainBytes
	if gdi >= int64(len(s.gd)) {
		return segment{}, fmt.Errorf("offset %d beyond the grain directory", off)
	}
	if s.gd[gdi] == 0 {
		length := (gdi+1)*s.gtCover - off
		for next := gdi + 1; next < int64(len(s.gd)) && length < want && s.gd[next] == 0; next++ {
			length += s.gtCover
		}
		return segment{kind: segParent, length: length}, nil
	}
	t, err := s.gt(int64(s.gd[gdi]))
	if err != nil {
		return segment{}, err
	}
	gti := (off % s.gtCover) / s.grainBytes
	kind, err := s.grainKind(t[gti])
	if err != nil {
		return segment{}, fmt.Errorf("grain table %d entry %d: %w", gdi, gti, err)
	}
	host := int64(t[gti]) * vmdkSectorSize
	if kind == segCompressed {
		guestStart := off - in
		lba := guestStart / vmdkSectorSize
		need := min(s.grainBytes, s.size-guestStart)
		locate := func() (int64, int64, error) {
			var mk [vmdkGrainMarkerBytes]byte
			if ok, err := readExact(s.f, mk[:], host); err != nil || !ok {
				return 0, 0, fmt.Errorf("grain marker at %d unreadable (%v)", host, err)
			}
			le := binary.LittleEndian
			if got := int64(le.Uint64(mk[:])); got != lba {
				return 0, 0, fmt.Errorf("grain marker says sector %d, expected %d", got, lba)
			}
			n := int64(le.Uint32(mk[8:]))
			if n == 0 || n > 2*s.grainBytes+1024 || host+vmdkGrainMarkerBytes+n > s.f.Size() {
				return 0, 0, fmt.Errorf("compressed grain of %d bytes at %d invalid", n, host)
			}
			return host + vmdkGrainMarkerBytes, n, nil
		}
		return segment{kind: segCompressed, length: s.grainBytes - in, comp: &compressed{
			file: s.f, off: host, guestStart: guestStart, size: s.grainBytes, locate: locate,
			decode: func(dst, src []byte) error { return inflateGrain(dst, src, need) }}}, nil
	}
	length := s.grainBytes - in
	for j := gti + 1; j < int64(s.h.gtes) && length < want; j++ {
		k2, err := s.grainKind(t[j])
		if err != nil || k2 != kind || (kind == segData && int64(t[j])*vmdkSectorSize != host+(j-gti)*s.grainBytes) {
			break
		}
		length += s.grainBytes
	}
	seg := segment{kind: kind, length: length}
	if kind == segData {
		seg.file, seg.off = s.f, host+in
	}
	return seg, nil
}

// inflateGrain inflates a compressed grain's zlib data. The last grain
// of a disk whose size is not a multiple of the grain may hold only the
// need bytes that remain.
func inflateGrain(dst, src []byte, need int64) error {
	r, err := zlib.NewReader(bytes.NewReader(src))
	if err != nil {
		return err
	}
	defer r.Close()
	k, err := io.ReadFull(r, dst)
	if err == io.ErrUnexpectedEOF && int64(k) >= need {
		clear(dst[k:])
		return nil
	}
	return err
}
