package disk

import (
	"path/filepath"
	"testing"
)

// BenchmarkInPlaceWrite writes 16 MiB through OpenInPlace: "alloc" into an
// empty image in 64 KiB or 1 MiB writes (each write allocates: data,
// refcount and table flushes), "overwrite" into the same image once
// allocated (no metadata). Run with
//
//	go test -run '^$' -bench InPlace -benchtime 3x ./agent/disk/
func BenchmarkInPlaceWrite(b *testing.B) {
	qemuImg := needTool(b, "qemu-img")
	const size = 16 << 20
	p := make([]byte, 1<<20)
	for i := range p {
		p[i] = byte(i*31 + 7)
	}
	writeAll := func(b *testing.B, img string, chunk int64) {
		w, err := OpenInPlace(img, InPlaceOptions{})
		if err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < size; off += chunk {
			if _, err := w.WriteAt(p[:chunk], off); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct{ name, format, opts string }{
		{"raw", "raw", ""}, {"qcow2", "qcow2", "cluster_size=65536"}, {"vhdx", "vhdx", "block_size=1M"},
	} {
		for _, mode := range []string{"alloc-64k", "alloc-1m", "overwrite-64k"} {
			chunk := int64(64 << 10)
			if mode == "alloc-1m" {
				chunk = 1 << 20
			}
			b.Run(c.name+"/"+mode, func(b *testing.B) {
				dir := b.TempDir()
				b.SetBytes(size)
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					img := filepath.Join(dir, "home")
					args := []string{"create", "-q", "-f", c.format}
					if c.opts != "" {
						args = append(args, "-o", c.opts)
					}
					run(b, qemuImg, append(args, img, "16M")...)
					if mode == "overwrite-64k" {
						writeAll(b, img, chunk)
					}
					b.StartTimer()
					writeAll(b, img, chunk)
				}
			})
		}
	}
}
