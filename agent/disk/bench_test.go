package disk

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"
)

// Benchmarks: reading every extent of the seeded 64 MiB image through
// each reader, and writing it through each writer. The raw case is the
// anchor (page-cache reads of the same data). Run with
//   go test -run '^$' -bench . -benchtime 5x ./agent/disk/

func BenchmarkRead(b *testing.B) {
	q := needQemu(b)
	dir := b.TempDir()
	base := filepath.Join(dir, "base.raw")
	writeImage(b, base, imageSpec{size: oddSize, seed: 20261125})
	cases := []struct {
		name, fmt string
		opts      []string
	}{
		{"raw", "", nil}, {"qcow2", "qcow2", nil}, {"qcow2-zlib", "qcow2", []string{"-c"}},
		{"vhdx", "vhdx", nil}, {"vhd", "vpc", []string{"-o", "force_size=on"}},
		{"vmdk", "vmdk", nil}, {"vmdk-stream", "vmdk", []string{"-o", "subformat=streamOptimized"}},
	}
	for _, c := range cases {
		img := base
		if c.fmt != "" {
			img = filepath.Join(dir, c.name)
			q.convert(b, base, "raw", img, c.fmt, c.opts...)
		}
		b.Run(c.name, func(b *testing.B) {
			src, err := Open(img, OpenOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer src.Close()
			ext, err := src.Extents(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(totalLength(ext))
			buf := make([]byte, 1<<20)
			b.ResetTimer()
			for range b.N {
				for _, e := range ext {
					for off := e.Offset; off < e.End(); off += int64(len(buf)) {
						n := min(int64(len(buf)), e.End()-off)
						if _, err := src.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
							b.Fatal(err)
						}
					}
				}
			}
		})
	}
}

func BenchmarkWrite(b *testing.B) {
	dir := b.TempDir()
	base := filepath.Join(dir, "base.raw")
	writeImage(b, base, imageSpec{size: oddSize, seed: 20261125})
	src, err := Open(base, OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	ext, err := src.Extents(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range []Format{FormatRaw, FormatQCOW2, FormatVHDX, FormatVMDK} {
		b.Run(string(f), func(b *testing.B) {
			b.SetBytes(totalLength(ext))
			for i := range b.N {
				dst := filepath.Join(dir, "out-"+string(f)+string(rune('a'+i%26)))
				if err := Write(context.Background(), dst, f, src, WriteOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
