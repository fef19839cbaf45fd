package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
)

// requireCapability skips a test that needs something this machine lacks,
// and fails it under FERRY_CI=1, where a skipped test that should have run
// is a failure.
func requireCapability(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("FERRY_CI") == "1" {
		t.Fatalf("required capability missing under FERRY_CI=1: %s", why)
	}
	t.Skip("skipping: " + why)
}

// needTool returns the path of an external tool or skips/fails.
func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	requireCapability(t, err == nil, name+" not found in PATH (Debian package qemu-utils; scripts/test-deps.sh installs it)")
	return p
}

// run runs a command and fails the test with its output on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s %v:\n%s", name, args, out)
	return string(out)
}

// regionKind is what the image generator puts in a run of bytes.
type regionKind int

const (
	regionHole regionKind = iota
	regionRandom
	regionText
	regionZeros // zeros that are written (allocated), not a hole
)

// words feed the compressible regions.
var words = []string{"ferry", "disk", "cluster", "block", "replica", "guest", "sector", "the", "of",
	"recovery", "point", "failover", "bytes", "zero", "hole", "extent", "grain", "table", "log", "entry"}

// imageSpec describes a seeded raw image.
type imageSpec struct {
	size int64
	seed uint64
	// dataAt forces a data run at these offsets (e.g. just below the end
	// or beyond 4 GiB) in addition to the random layout.
	dataAt []int64
	// sparseOnly lays data only at dataAt, the rest stays hole (cheap
	// large images).
	sparseOnly bool
}

// writeImage writes a seeded image with holes, random, compressible and
// zero-filled runs, 512-byte aligned, so that every format sees clusters
// that are full, partial, zero and absent.
func writeImage(t testing.TB, path string, spec imageSpec) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	require.NoError(t, f.Truncate(spec.size))
	rng := rand.New(rand.NewPCG(spec.seed, spec.seed^0x9e3779b97f4a7c15))
	fill := func(off, n int64, kind regionKind) {
		if n <= 0 || kind == regionHole {
			return
		}
		buf := make([]byte, n)
		switch kind {
		case regionRandom:
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
		case regionText:
			var b bytes.Buffer
			for int64(b.Len()) < n {
				b.WriteString(words[rng.IntN(len(words))])
				b.WriteByte(' ')
			}
			copy(buf, b.Bytes())
		}
		_, err := f.WriteAt(buf, off)
		require.NoError(t, err)
	}
	if !spec.sparseOnly {
		for off := int64(0); off < spec.size; {
			n := (rng.Int64N(3<<20) + 512) &^ 511
			if off+n > spec.size {
				n = spec.size - off
			}
			var kind regionKind
			switch p := rng.IntN(100); {
			case p < 40:
				kind = regionHole
			case p < 70:
				kind = regionRandom
			case p < 95:
				kind = regionText
			default:
				kind = regionZeros
			}
			fill(off, n, kind)
			off += n
		}
	}
	for _, at := range spec.dataAt {
		n := min(int64(96<<10), spec.size-at)
		fill(at, n, regionRandom)
	}
}

// compareWithFile checks that src reads exactly the bytes of a raw file.
func compareWithFile(t testing.TB, src Source, rawPath string) {
	t.Helper()
	f, err := os.Open(rawPath)
	require.NoError(t, err)
	defer f.Close()
	fi, err := f.Stat()
	require.NoError(t, err)
	require.Equal(t, fi.Size(), src.Size(), "virtual size")
	// Read only where the reference has data, and check our view is zero elsewhere
	// through the same loop: SEEK_DATA on the reference keeps 4 GiB cases cheap.
	ref, err := Open(rawPath, OpenOptions{Format: FormatRaw})
	require.NoError(t, err)
	defer ref.Close()
	refExt, err := ref.Extents(context.Background())
	require.NoError(t, err)
	ourExt, err := src.Extents(context.Background())
	require.NoError(t, err)
	// Every byte in either list is compared; outside both, both must be zero
	// (the reference by its holes, ours by its contract, checked in checkExtents).
	union := normalize(append(append([]Extent{}, refExt...), ourExt...))
	const chunk = 1 << 20
	a, b := make([]byte, chunk), make([]byte, chunk)
	for _, e := range union {
		for off := e.Offset; off < e.End(); off += chunk {
			n := min(chunk, e.End()-off)
			_, err := f.ReadAt(a[:n], off)
			if err != nil && !errors.Is(err, io.EOF) {
				require.NoError(t, err)
			}
			m, err := src.ReadAt(b[:n], off)
			if err != nil && !(errors.Is(err, io.EOF) && int64(m) == n) {
				require.NoError(t, err, "ReadAt(%d, %d)", off, n)
			}
			if !bytes.Equal(a[:n], b[:n]) {
				i := firstDiff(a[:n], b[:n])
				t.Fatalf("guest bytes differ at offset %d (0x%x): want %02x got %02x", off+int64(i), off+int64(i), a[i], b[i])
			}
		}
	}
	// Outside our extents we may not even look; prove the view reads zeros
	// there for a sample of the gaps (the extents contract).
	checkZeroOutside(t, src, ourExt, refExt)
}

// checkZeroOutside reads, through src, the reference's data that lies
// outside src's extents: it must all be zero.
func checkZeroOutside(t testing.TB, src Source, ours, refData []Extent) {
	t.Helper()
	gaps := complement(ours, src.Size())
	buf := make([]byte, 1<<20)
	for _, e := range intersect(gaps, refData) {
		for off := e.Offset; off < e.End(); off += int64(len(buf)) {
			n := min(int64(len(buf)), e.End()-off)
			_, err := src.ReadAt(buf[:n], off)
			if err != nil && !errors.Is(err, io.EOF) {
				require.NoError(t, err)
			}
			if i := bytes.IndexFunc(buf[:n], func(r rune) bool { return r != 0 }); i >= 0 {
				t.Fatalf("non-zero guest byte at %d outside the extents", off+int64(i))
			}
		}
	}
}

// complement returns the gaps between sorted extents within [0, size).
func complement(list []Extent, size int64) []Extent {
	var out []Extent
	pos := int64(0)
	for _, e := range list {
		if e.Offset > pos {
			out = append(out, Extent{pos, e.Offset - pos})
		}
		pos = max(pos, e.End())
	}
	if pos < size {
		out = append(out, Extent{pos, size - pos})
	}
	return out
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// checkExtentShape checks the Extents contract: ascending, non-overlapping,
// coalesced, inside the disk.
func checkExtentShape(t testing.TB, ext []Extent, size int64) {
	t.Helper()
	for i, e := range ext {
		require.Positive(t, e.Length, "extent %d empty: %+v", i, e)
		require.GreaterOrEqual(t, e.Offset, int64(0))
		require.LessOrEqual(t, e.End(), size, "extent %d past the end", i)
		if i > 0 {
			require.Greater(t, e.Offset, ext[i-1].End(), "extents %d and %d overlap or touch: %+v %+v", i-1, i, ext[i-1], e)
		}
	}
}

func totalLength(ext []Extent) int64 {
	var n int64
	for _, e := range ext {
		n += e.Length
	}
	return n
}

func mib(n int64) int64 { return n << 20 }

func describe(e []Extent) string {
	if len(e) > 6 {
		return fmt.Sprintf("%v ... (%d extents, %d bytes)", e[:6], len(e), totalLength(e))
	}
	return fmt.Sprint(e)
}
