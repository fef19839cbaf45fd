package disk

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// The conformance suite: every reader, on images made by qemu-img from the
// same seeded raw images, must read what qemu-img reads, report extents
// that hold all the data and no more than qemu-img map calls allocated,
// and never read holes.

// oddSize is 64 MiB + 3 sectors: not a multiple of any cluster, grain or
// block size, so every format has a partial last cluster.
const oddSize = 64<<20 + 3*512

// fixture is one image under test.
type fixture struct {
	name    string
	path    string // the image to open
	qemuFmt string // qemu's driver name for it
	format  Format // what Open must detect
	// grain is the format's allocation unit: the extents may exceed the
	// reference's data only by rounding to it (0: no such check).
	grain int64
}

// qemuTools are the external tools the suite uses.
type qemuTools struct{ img, io string }

func needQemu(t testing.TB) qemuTools {
	t.Helper()
	return qemuTools{img: needTool(t, "qemu-img"), io: needTool(t, "qemu-io")}
}

// convert runs qemu-img convert with output options.
func (q qemuTools) convert(t testing.TB, src, srcFmt, dst, dstFmt string, extra ...string) {
	t.Helper()
	args := append([]string{"convert", "-q", "-f", srcFmt, "-O", dstFmt}, extra...)
	run(t, q.img, append(args, src, dst)...)
}

// toRaw is the oracle: qemu-img's own reading of an image, as a sparse raw file.
func (q qemuTools) toRaw(t testing.TB, img, fmt string) string {
	t.Helper()
	out := img + ".ref.raw"
	q.convert(t, img, fmt, out, "raw")
	return out
}

func (q qemuTools) virtualSize(t testing.TB, img, fmt string) int64 {
	t.Helper()
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	require.NoError(t, json.Unmarshal([]byte(run(t, q.img, "info", "--output=json", "-f", fmt, img)), &info))
	return info.VirtualSize
}

// dataMap returns the ranges qemu-img map calls data (at any depth of the chain).
func (q qemuTools) dataMap(t testing.TB, img, fmt string) []Extent {
	t.Helper()
	var entries []struct {
		Start  int64 `json:"start"`
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
	}
	require.NoError(t, json.Unmarshal([]byte(run(t, q.img, "map", "--output=json", "-f", fmt, img)), &entries))
	var out []Extent
	for _, e := range entries {
		if e.Data {
			out = appendExtent(out, Extent{e.Start, e.Length})
		}
	}
	return out
}

// checkConformance runs every check of the suite on one fixture.
func checkConformance(t *testing.T, q qemuTools, fx fixture) {
	t.Helper()
	ref := q.toRaw(t, fx.path, fx.qemuFmt)
	stats := &ReadStats{}
	src, err := Open(fx.path, OpenOptions{Stats: stats})
	require.NoError(t, err)
	defer src.Close()
	require.Equal(t, fx.format, src.Format(), "detected format")
	require.Equal(t, q.virtualSize(t, fx.path, fx.qemuFmt), src.Size(), "virtual size vs qemu-img info")

	info, err := Probe(fx.path)
	require.NoError(t, err)
	require.Equal(t, fx.format, info.Format)
	require.Equal(t, src.Size(), info.VirtualSize)

	ext, err := src.Extents(context.Background())
	require.NoError(t, err)
	checkExtentShape(t, ext, src.Size())

	// Bound: our extents lie inside what qemu-img map calls data.
	qd := q.dataMap(t, fx.path, fx.qemuFmt)
	require.Equal(t, ext, intersect(ext, qd), "extents %s reach outside qemu-img map's data %s", describe(ext), describe(qd))

	// Tight: no more than the data qemu reads, rounded to the allocation unit.
	if fx.grain > 0 {
		rs, err := Open(ref, OpenOptions{Format: FormatRaw})
		require.NoError(t, err)
		refExt, err := rs.Extents(context.Background())
		rs.Close()
		require.NoError(t, err)
		var rounded []Extent
		for _, e := range refExt {
			lo, hi := e.Offset/fx.grain*fx.grain, (e.End()+fx.grain-1)/fx.grain*fx.grain
			rounded = appendExtent(rounded, Extent{lo, min(hi, src.Size()) - lo})
		}
		require.LessOrEqual(t, totalLength(ext), totalLength(rounded),
			"extents %s cover more than the data %s rounded to %d", describe(ext), describe(rounded), fx.grain)
	}

	// Holes are never read: reading every extent reads from the container
	// files at most the extents' bytes plus the format's tables.
	stats.Bytes.Store(0)
	buf := make([]byte, 1<<20)
	for _, e := range ext {
		for off := e.Offset; off < e.End(); off += int64(len(buf)) {
			n := min(int64(len(buf)), e.End()-off)
			if _, err := src.ReadAt(buf[:n], off); err != nil {
				require.ErrorIs(t, err, io.EOF)
			}
		}
	}
	require.LessOrEqual(t, stats.Bytes.Load(), totalLength(ext)+metadataBudget,
		"reading %d bytes of extents read %d bytes of files", totalLength(ext), stats.Bytes.Load())

	// Byte equality with qemu's reading, and zeros outside the extents.
	compareWithFile(t, src, ref)
}

// metadataBudget bounds the table bytes (L1/L2, BAT, grain tables,
// compressed-cluster slack) a full read of the extents may add: far less
// than the holes of the test images, so reading a hole would exceed it.
const metadataBudget = 4 << 20

// baseImages builds the seeded raw images every fixture starts from.
func baseImage(t *testing.T, dir string) string {
	p := filepath.Join(dir, "base.raw")
	// Data forced at 3 MiB, where the chain tests write zeros over it, and
	// at the very end (the partial last cluster).
	writeImage(t, p, imageSpec{size: oddSize, seed: 20261125, dataAt: []int64{3 << 20, 3<<20 + 96<<10, oddSize - 96<<10}})
	return p
}

func TestConformance(t *testing.T) {
	q := needQemu(t)
	dir := t.TempDir()
	base := baseImage(t, dir)
	mk := func(name, qemuFmt string, f Format, grain int64, opts ...string) fixture {
		p := filepath.Join(dir, name)
		q.convert(t, base, "raw", p, qemuFmt, opts...)
		return fixture{name: name, path: p, qemuFmt: qemuFmt, format: f, grain: grain}
	}
	fixtures := []func() fixture{
		func() fixture { return fixture{name: "raw", path: base, qemuFmt: "raw", format: FormatRaw} }, // written zero runs are allocated: no grain bound,
		func() fixture { return mk("v3.qcow2", "qcow2", FormatQCOW2, 64<<10) },
		func() fixture { return mk("v2.qcow2", "qcow2", FormatQCOW2, 64<<10, "-o", "compat=0.10") },
		func() fixture { return mk("c4k.qcow2", "qcow2", FormatQCOW2, 4<<10, "-o", "cluster_size=4096") },
		func() fixture { return mk("c2m.qcow2", "qcow2", FormatQCOW2, 2<<20, "-o", "cluster_size=2M") },
		func() fixture { return mk("zlib.qcow2", "qcow2", FormatQCOW2, 64<<10, "-c") },
		func() fixture {
			return mk("zstd.qcow2", "qcow2", FormatQCOW2, 64<<10, "-c", "-o", "compression_type=zstd")
		},
		func() fixture { return mk("v2c.qcow2", "qcow2", FormatQCOW2, 64<<10, "-c", "-o", "compat=0.10") },
		func() fixture { return mk("dynamic.vhdx", "vhdx", FormatVHDX, 32<<20) },
		func() fixture { return mk("fixed.vhdx", "vhdx", FormatVHDX, 64<<10, "-o", "subformat=fixed") },
		func() fixture { return mk("b1m.vhdx", "vhdx", FormatVHDX, 1<<20, "-o", "block_size=1M") },
		func() fixture { return mk("dynamic.vhd", "vpc", FormatVHD, 2<<20) },
		func() fixture { return mk("fixed.vhd", "vpc", FormatVHD, 64<<10, "-o", "subformat=fixed") },
		func() fixture { return mk("forced.vhd", "vpc", FormatVHD, 2<<20, "-o", "force_size=on") },
		func() fixture {
			return mk("fixed-forced.vhd", "vpc", FormatVHD, 64<<10, "-o", "subformat=fixed,force_size=on")
		},
		func() fixture { return mk("sparse.vmdk", "vmdk", FormatVMDK, 64<<10) },
		func() fixture { return mk("flat.vmdk", "vmdk", FormatVMDK, 64<<10, "-o", "subformat=monolithicFlat") },
		func() fixture {
			return mk("stream.vmdk", "vmdk", FormatVMDK, 64<<10, "-o", "subformat=streamOptimized")
		},
		func() fixture {
			return mk("2gbsparse.vmdk", "vmdk", FormatVMDK, 64<<10, "-o", "subformat=twoGbMaxExtentSparse")
		},
		func() fixture {
			return mk("2gbflat.vmdk", "vmdk", FormatVMDK, 64<<10, "-o", "subformat=twoGbMaxExtentFlat")
		},
		func() fixture { return mk("v3.vmdk", "vmdk", FormatVMDK, 64<<10, "-o", "compat6=on,zeroed_grain=on") },
		func() fixture { return mk("s4k.vhdx", "vhdx", FormatVHDX, 8<<20, "-o", "block_size=8M,log_size=2M") },
	}
	for _, build := range fixtures {
		fx := build()
		t.Run(fx.name, func(t *testing.T) { checkConformance(t, q, fx) })
	}
}

// TestConformanceChains: backing chains written into with qemu-io: data,
// zero clusters that hide the backing file, a child larger than its
// backing file, and a raw backing file.
func TestConformanceChains(t *testing.T) {
	q := needQemu(t)
	dir := t.TempDir()
	base := baseImage(t, dir)
	writes := []string{
		"write -P 0x5a 1M 64k",     // over backing data or hole
		"write -P 0x11 7340544 3k", // unaligned, inside one cluster
		"write -z 3M 128k",         // zeros that hide the backing file's data
		"write -P 0x77 62M 2M",     // near the end
	}
	type chain struct {
		name, parentFmt, childFmt string
		f                         Format
		childSize                 int64
		grain                     int64 // 0: the child stores written zeros as data
	}
	for _, c := range []chain{
		{"qcow2-on-qcow2", "qcow2", "qcow2", FormatQCOW2, oddSize, 64 << 10},
		{"qcow2-on-raw", "raw", "qcow2", FormatQCOW2, oddSize, 64 << 10},
		{"qcow2-larger-child", "qcow2", "qcow2", FormatQCOW2, 80 << 20, 64 << 10},
		{"vmdk-on-vmdk", "vmdk", "vmdk", FormatVMDK, oddSize, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			sub := filepath.Join(dir, c.name)
			require.NoError(t, os.MkdirAll(sub, 0o755))
			parent := filepath.Join(sub, "parent."+c.parentFmt)
			if c.parentFmt == "raw" {
				run(t, "cp", "--sparse=always", base, parent)
			} else {
				q.convert(t, base, "raw", parent, c.parentFmt)
			}
			child := filepath.Join(sub, "child."+c.childFmt)
			// A relative backing name, as hypervisors write them.
			run(t, q.img, "create", "-q", "-f", c.childFmt, "-b", filepath.Base(parent), "-F", c.parentFmt,
				child, strconv.FormatInt(c.childSize, 10))
			args := []string{"-f", c.childFmt}
			for _, w := range writes {
				args = append(args, "-c", w)
			}
			if c.childSize > oddSize { // past the backing file's end
				args = append(args, "-c", "write -P 0x33 75M 64k")
			}
			run(t, q.io, append(args, child)...)
			checkConformance(t, q, fixture{name: c.name, path: child, qemuFmt: c.childFmt, format: c.f, grain: c.grain})

			info, err := Probe(child)
			require.NoError(t, err)
			require.Equal(t, []string{parent}, info.Backing)

			// BaseDir resolves the relative backing name elsewhere: a copy of
			// the child in another directory reads the same.
			other := t.TempDir()
			moved := filepath.Join(other, "child."+c.childFmt)
			run(t, "cp", "--sparse=always", child, moved)
			_, err = Open(moved, OpenOptions{})
			require.Error(t, err, "backing file must not be found next to the moved child")
			src, err := Open(moved, OpenOptions{BaseDir: sub})
			require.NoError(t, err)
			defer src.Close()
			compareWithFile(t, src, q.toRaw(t, child, c.childFmt))
		})
	}
}

// TestConformanceLarge: a 4 GiB+ sparse image with data beyond 4 GiB,
// in every format; cheap because everything stays sparse.
func TestConformanceLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("large sparse images in -short mode")
	}
	q := needQemu(t)
	dir := t.TempDir()
	size := int64(4<<30 + 5<<20 + 512)
	base := filepath.Join(dir, "large.raw")
	writeImage(t, base, imageSpec{size: size, seed: 4, sparseOnly: true,
		dataAt: []int64{0, 1<<30 + 512, 4<<30 - 32<<10, 4<<30 + 1<<20 + 1536, size - 96<<10}})
	mk := func(name, qemuFmt string, f Format, grain int64, opts ...string) fixture {
		p := filepath.Join(dir, name)
		q.convert(t, base, "raw", p, qemuFmt, opts...)
		return fixture{name: name, path: p, qemuFmt: qemuFmt, format: f, grain: grain}
	}
	fixtures := []func() fixture{
		func() fixture { return fixture{name: "raw", path: base, qemuFmt: "raw", format: FormatRaw} }, // written zero runs are allocated: no grain bound,
		func() fixture { return mk("large.qcow2", "qcow2", FormatQCOW2, 64<<10) },
		func() fixture { return mk("large.vhdx", "vhdx", FormatVHDX, 32<<20) },
	}
	for _, build := range fixtures {
		fx := build()
		t.Run(fx.name, func(t *testing.T) { checkConformance(t, q, fx) })
	}
}
