// Package workload generates the seeded data BENCHMARKS.md measures: a mixed
// disk image (holes, text-like compressible data, random data in 1–16 MiB
// runs), a 1% delta of random 4 KiB writes, and a churn writer. Everything
// is a pure function of its seed so anyone can rerun it. It is a leaf.
package workload

import (
	_ "embed"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"strings"
)

//go:embed words.txt
var wordList string

var words = strings.Fields(wordList)

// Kind of a region of the mixed image.
type Kind int

const (
	Hole Kind = iota
	Text
	Random
)

// Region is one run of the mixed image.
type Region struct {
	Offset, Length int64
	Kind           Kind
}

// Layout returns the regions of a mixed image of size bytes: 40% holes,
// 30% text, 30% random, interleaved in 1–16 MiB runs (MiB-aligned).
func Layout(seed uint64, size int64) []Region {
	rng := rand.New(rand.NewPCG(seed, 0x6d69786564))
	var out []Region
	for off := int64(0); off < size; {
		n := (1 + rng.Int64N(16)) << 20
		n = min(n, size-off)
		k := Hole
		switch x := rng.IntN(10); {
		case x < 4:
			k = Hole
		case x < 7:
			k = Text
		default:
			k = Random
		}
		out = append(out, Region{Offset: off, Length: n, Kind: k})
		off += n
	}
	return out
}

// Fill writes region content for [off, off+len(p)) of a region of kind k.
// Content depends only on (seed, absolute offset), so any piece can be
// regenerated independently.
func Fill(p []byte, seed uint64, off int64, k Kind) {
	switch k {
	case Hole:
		clear(p)
	case Random:
		fillRandom(p, seed, off)
	case Text:
		fillText(p, seed, off)
	}
}

// fillRandom fills p from a PCG stream keyed by the 64 KiB-aligned chunk.
func fillRandom(p []byte, seed uint64, off int64) {
	for len(p) > 0 {
		chunk := off &^ (64<<10 - 1)
		rng := rand.New(rand.NewPCG(seed^0x72616e64, uint64(chunk)))
		skip := off - chunk
		var buf [8]byte
		pos := int64(0)
		for pos < 64<<10 && len(p) > 0 {
			binary.LittleEndian.PutUint64(buf[:], rng.Uint64())
			for i := 0; i < 8 && len(p) > 0; i, pos = i+1, pos+1 {
				if pos >= skip {
					p[0] = buf[i]
					p = p[1:]
					off++
				}
			}
		}
	}
}

// fillText writes seeded word salad with numbers, tuned so zstd -1
// compresses it about 2.3:1 (BENCHMARKS.md).
func fillText(p []byte, seed uint64, off int64) {
	for len(p) > 0 {
		chunk := off &^ (64<<10 - 1)
		rng := rand.New(rand.NewPCG(seed^0x74657874, uint64(chunk)))
		var line []byte
		text := make([]byte, 0, 64<<10+128)
		for len(text) < 64<<10 {
			line = line[:0]
			for n := 4 + rng.IntN(10); n > 0; n-- {
				line = append(line, words[rng.IntN(len(words))]...)
				switch rng.IntN(6) {
				case 0:
					line = append(line, ' ')
					for d := 1 + rng.IntN(6); d > 0; d-- {
						line = append(line, byte('0'+rng.IntN(10)))
					}
				case 1:
					line = append(line, ',')
				}
				line = append(line, ' ')
			}
			line = append(line, '.', '\n')
			text = append(text, line...)
		}
		skip := off - chunk
		n := copy(p, text[skip:64<<10])
		p = p[n:]
		off += int64(n)
	}
}

// WriteImage creates a sparse mixed image at path.
func WriteImage(path string, seed uint64, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for _, r := range Layout(seed, size) {
		if r.Kind == Hole {
			continue
		}
		for off := r.Offset; off < r.Offset+r.Length; off += int64(len(buf)) {
			n := min(int64(len(buf)), r.Offset+r.Length-off)
			Fill(buf[:n], seed, off, r.Kind)
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return err
			}
		}
	}
	return f.Sync()
}

// Write is one 4 KiB write of a delta or churn.
type Write struct {
	Offset int64
	Seq    int
}

// WriteSize is the size of every delta and churn write.
const WriteSize = 4096

// Delta returns fraction·size/4 KiB writes at seeded random 4 KiB-aligned
// offsets (the 1% delta is fraction 0.01).
func Delta(seed uint64, size int64, fraction float64) []Write {
	rng := rand.New(rand.NewPCG(seed, 0x64656c7461))
	n := int(float64(size) * fraction / WriteSize)
	out := make([]Write, n)
	for i := range out {
		out[i] = Write{Offset: rng.Int64N(size/WriteSize) * WriteSize, Seq: i}
	}
	return out
}

// Content is the data of write number seq (random: incompressible).
func Content(p []byte, seed uint64, seq int) {
	rng := rand.New(rand.NewPCG(seed^0x77726974, uint64(seq)))
	for i := 0; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], rng.Uint64())
	}
}

// Apply performs writes on the file at path (and fsyncs once).
func Apply(path string, seed uint64, ws []Write) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, WriteSize)
	for _, w := range ws {
		Content(buf, seed, w.Seq)
		if _, err := f.WriteAt(buf, w.Offset); err != nil {
			return err
		}
	}
	return f.Sync()
}
