package bdtrack

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkRandomWrite4K: O_DIRECT 4 KiB random writes, one at a time, to
// a loop device on /dev/shm (so the device is cheap and the tracker's cost
// shows), with no tracker and with one at 4 KiB and 64 KiB blocks.
//
//	go test -run '^$' -bench RandomWrite4K -benchtime 3s ./agent/bdtrack/
func BenchmarkRandomWrite4K(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root (loop devices, bpf)")
	}
	const size = 1 << 30
	img, err := os.CreateTemp("/dev/shm", "bdtrack-bench-*.img")
	if err != nil {
		b.Skip(err)
	}
	defer os.Remove(img.Name())
	img.Truncate(size)
	img.Close()
	out, err := exec.Command("losetup", "-f", "--show", img.Name()).CombinedOutput()
	if err != nil {
		b.Fatalf("losetup: %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()
	bpffs := b.TempDir()
	if out, err := exec.Command("mount", "-t", "bpf", "bpf", bpffs).CombinedOutput(); err != nil {
		b.Fatalf("mount bpffs: %v %s", err, out)
	}
	defer exec.Command("umount", bpffs).Run()

	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := alignedBuf(b, 4*kib, 7)
	run := func(b *testing.B, blockSize int) {
		if blockSize > 0 {
			tr, err := Open(dev, blockSize, Options{BPFFS: bpffs})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Remove()
		}
		rng := rand.New(rand.NewPCG(3, 4))
		b.SetBytes(4 * kib)
		for b.Loop() {
			if _, err := f.WriteAt(buf, int64(rng.IntN(size/(4*kib)))*4*kib); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
	}
	b.Run("none", func(b *testing.B) { run(b, 0) })
	b.Run("tracked-4KiB", func(b *testing.B) { run(b, 4*kib) })
	b.Run("tracked-64KiB", func(b *testing.B) { run(b, 64*kib) })
	b.Run("none-again", func(b *testing.B) { run(b, 0) })
}
