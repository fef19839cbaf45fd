package disk

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// Fuzz targets for every parser that reads bytes an image file controls.
// Seeds are real headers (see testdata/fuzz); the properties are: no
// panic, no unbounded allocation, and what parses is self-consistent.

func FuzzQCOW2Header(f *testing.F) {
	h := make([]byte, 512)
	copy(h, qcow2Magic)
	h[7] = 3     // version
	h[23] = 16   // cluster_bits
	h[30] = 1    // size 64 KiB
	h[39] = 1    // l1_size
	h[46] = 3    // l1 offset 0x30000
	h[103] = 104 // header_length
	f.Add(h, int64(1<<20))
	f.Fuzz(func(t *testing.T, b []byte, fileSize int64) {
		if fileSize < 0 {
			return
		}
		hd, err := parseQCOW2Header(b, fileSize)
		if err != nil {
			var he *qcow2HeaderError
			if !errors.As(err, &he) || he.reason == "" {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if hd.clusterBits < qcow2MinClusterBits || hd.clusterBits > qcow2MaxClusterBits {
			t.Fatalf("accepted cluster_bits %d", hd.clusterBits)
		}
		if hd.size > 0 && hd.l1Off+uint64(hd.l1Size)*8 < hd.l1Off {
			t.Fatalf("L1 range overflows")
		}
	})
}

// FuzzVHDXStructures takes the meaningful prefixes of a header, a region
// table and a metadata region (table, then items) and pads them to their
// on-disk sizes, so that seeds stay small.
func FuzzVHDXStructures(f *testing.F) {
	f.Add([]byte("head"), []byte("regi"), []byte("metadata"), []byte{})
	f.Fuzz(func(t *testing.T, hdr, region, metaTable, metaItems []byte) {
		pad := func(b []byte, n int) []byte {
			if len(b) >= n {
				return b[:n]
			}
			return append(append([]byte{}, b...), make([]byte, n-len(b))...)
		}
		if h, err := parseVHDXHeader(pad(hdr, vhdxHeaderSize)); err == nil && h == nil {
			t.Fatal("nil header without error")
		}
		if rs, err := parseVHDXRegionTable(pad(region, vhdxRegionSize)); err == nil && len(rs) > 2047 {
			t.Fatalf("%d regions", len(rs))
		}
		meta := append(pad(metaTable, 64<<10), metaItems...)
		if m, err := parseVHDXMetadata(meta); err == nil {
			if m.blockSize < 1<<20 || m.virtualSize == 0 {
				t.Fatalf("accepted block size %d, size %d", m.blockSize, m.virtualSize)
			}
		}
	})
}

func FuzzVHDXLog(f *testing.F) {
	id := mustGUID("11111111-2222-3333-4444-555555555555")
	page := make([]byte, vhdxLogSector)
	e := buildLogEntry(5, 0, id, 1<<20, 1<<20, []logOp{{off: 2 << 20, data: page}, {off: 3 << 20, n: 8192}})
	f.Add(append(e, make([]byte, vhdxLogSector)...))
	f.Fuzz(func(t *testing.T, log []byte) {
		// The log is a whole number of sectors; keep the fuzzer's input so.
		log = log[:len(log)/vhdxLogSector*vhdxLogSector]
		if len(log) == 0 {
			return
		}
		entries := scanVHDXLog(log, id)
		seq := activeVHDXSequence(entries, int64(len(log)))
		o := &overlayFile{pages: map[int64][]byte{}}
		for i, e := range seq {
			if i > 0 && e.seq != seq[i-1].seq+1 {
				t.Fatalf("sequence not contiguous")
			}
			_ = o.apply(e)
		}
	})
}

func FuzzVMDKDescriptor(f *testing.F) {
	f.Add("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\nRW 131072 SPARSE \"a.vmdk\"\n")
	f.Add("RW 4192256 FLAT \"a-f001.vmdk\" 0\nRW 100 ZERO\nparentFileNameHint=\"p.vmdk\"\n")
	f.Fuzz(func(t *testing.T, text string) {
		d, err := parseVMDKDescriptor(text)
		if err != nil {
			return
		}
		for _, e := range d.extents {
			if e.sectors <= 0 || e.offset < 0 {
				t.Fatalf("accepted extent %+v", e)
			}
		}
	})
}

func FuzzVMDKSparseHeader(f *testing.F) {
	h := make([]byte, 512)
	copy(h, vmdkSparseMagic)
	h[4], h[8], h[13], h[20], h[44], h[45] = 1, 3, 1, 128, 0, 2
	h[73], h[74], h[75], h[76] = '\n', ' ', '\r', '\n'
	f.Add(h)
	f.Fuzz(func(t *testing.T, b []byte) {
		hd, err := parseVMDKSparseHeader(b)
		if err != nil {
			return
		}
		if hd.grainSize == 0 || hd.gtes == 0 {
			t.Fatalf("accepted %+v", hd)
		}
	})
}

func FuzzVHDFooter(f *testing.F) {
	foot := make([]byte, vhdFooterSize)
	copy(foot, vhdCookie)
	foot[63] = vhdTypeDynamic
	f.Add(foot)
	f.Fuzz(func(t *testing.T, b []byte) {
		if ft, err := parseVHDFooter(b); err == nil && ft.virtualSize() < 0 {
			t.Fatalf("negative size")
		}
	})
}

// FuzzOpen opens arbitrary bytes as an image file and reads it all: any
// outcome but a panic or a hang is fine, and errors are typed.
func FuzzOpen(f *testing.F) {
	// Small images made by qemu-img are in testdata/fuzz/FuzzOpen.
	f.Add([]byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 ZERO\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "fuzz.img")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		src, err := Open(p, OpenOptions{BaseDir: filepath.Dir(p)})
		if err != nil {
			return
		}
		defer src.Close()
		ext, err := src.Extents(context.Background())
		if err != nil {
			return
		}
		buf := make([]byte, 64<<10)
		for i, e := range ext {
			if i > 64 {
				break
			}
			_, _ = src.ReadAt(buf[:min(int64(len(buf)), e.Length)], e.Offset)
		}
		if src.Size() > 0 {
			_, _ = src.ReadAt(buf[:1], src.Size()-1)
		}
	})
}
