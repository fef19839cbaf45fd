package disk

import (
	"bytes"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// inplaceBlock is the unit the crash tests reason about: a 4 KiB page, the
// granularity at which a killed process's write can be torn.
const inplaceBlock = 4096

// ipOp is one write (or zero when data is nil) of the generated sequence.
type ipOp struct {
	off  int64
	n    int64
	zero bool
	seed uint64
}

func (o ipOp) data() []byte {
	if o.zero {
		return make([]byte, o.n)
	}
	r := rand.New(rand.NewPCG(o.seed, 7))
	b := make([]byte, o.n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// genOps returns n block-aligned writes of 1..3 blocks and some zeros.
func genOps(seed uint64, size int64, n int) []ipOp {
	r := rand.New(rand.NewPCG(seed, 1))
	blocks := size / inplaceBlock
	ops := make([]ipOp, n)
	for i := range ops {
		k := int64(1 + r.IntN(3))
		b := r.Int64N(blocks - k + 1)
		ops[i] = ipOp{off: b * inplaceBlock, n: k * inplaceBlock, zero: r.IntN(7) == 0, seed: r.Uint64()}
	}
	return ops
}

func (o ipOp) apply(w BlockWriter) error {
	if o.zero {
		return w.Zero(o.off, o.n)
	}
	_, err := w.WriteAt(o.data(), o.off)
	return err
}

// ipVariant is a kind of home image the tests write into.
type ipVariant struct {
	name    string
	format  string   // qemu-img -O format
	options []string // qemu-img convert options
	text    bool     // fill the base with compressible text, not writeImage's mix
	sparse  bool     // a base with data in its first MiB only: the rest unallocated
}

var ipVariants = []ipVariant{
	{"raw", "raw", nil, false, false},
	{"qcow2-v3-4k", "qcow2", []string{"-o", "cluster_size=4096"}, false, false},
	{"qcow2-v2-4k", "qcow2", []string{"-o", "compat=0.10,cluster_size=4096"}, false, false},
	{"qcow2-v3-compressed", "qcow2", []string{"-c"}, false, false},
	{"qcow2-v3-compressed-4k", "qcow2", []string{"-c", "-o", "cluster_size=4096"}, true, false},
	{"qcow2-v3-512-refcount64", "qcow2", []string{"-o", "cluster_size=512,refcount_bits=64"}, false, false},
	{"qcow2-v3-prealloc-metadata", "qcow2", []string{"-o", "preallocation=metadata"}, false, false},
	{"vhdx-dynamic", "vhdx", []string{"-o", "block_size=1M"}, false, false},
	{"vhdx-fixed", "vhdx", []string{"-o", "subformat=fixed,block_size=1M"}, false, false},
	{name: "vhdx-dynamic-sparse", format: "vhdx", options: []string{"-o", "block_size=1M"}, sparse: true},
}

func variant(name string) ipVariant {
	for _, v := range ipVariants {
		if v.name == name {
			return v
		}
	}
	panic("no variant " + name)
}

// homeImage writes a seeded raw image (data, zero runs, holes) and
// converts it to the variant's format; it returns the image and the bytes
// the test keeps.
func homeImage(t *testing.T, dir string, v ipVariant, size int64, seed uint64) (string, []byte) {
	t.Helper()
	raw := filepath.Join(dir, "base.raw")
	if v.text {
		r := rand.New(rand.NewPCG(seed, 3))
		var b bytes.Buffer
		for int64(b.Len()) < size {
			b.WriteString(words[r.IntN(len(words))] + " ")
		}
		require.NoError(t, os.WriteFile(raw, b.Bytes()[:size], 0o600))
	} else {
		writeImage(t, raw, imageSpec{size: size, seed: seed, sparseOnly: v.sparse, dataAt: []int64{0}})
	}
	want, err := os.ReadFile(raw)
	require.NoError(t, err)
	img := filepath.Join(dir, "home."+v.name)
	args := append([]string{"convert", "-f", "raw", "-O", v.format}, v.options...)
	run(t, needTool(t, "qemu-img"), append(args, raw, img)...)
	return img, want
}

// qemuCheck runs qemu-img check and returns its exit code (0 clean,
// 2 corruption, 3 leaks only) and output.
func qemuCheck(t *testing.T, v ipVariant, img string) (int, string) {
	t.Helper()
	if v.format == "raw" {
		return 0, ""
	}
	out, err := exec.Command(needTool(t, "qemu-img"), "check", "-f", v.format, img).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	require.NoError(t, err, "%s", out)
	return 0, string(out)
}

// guestBytes converts the image to raw with qemu-img and returns it.
func guestBytes(t *testing.T, v ipVariant, img string) []byte {
	t.Helper()
	out := img + ".check.raw"
	run(t, needTool(t, "qemu-img"), "convert", "-U", "-f", v.format, "-O", "raw", img, out)
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	require.NoError(t, os.Remove(out))
	return b
}

func TestInPlaceRandomWritesMatchQemu(t *testing.T) {
	qemuImg := needTool(t, "qemu-img")
	const size = 3 << 20
	for i, v := range ipVariants {
		t.Run(v.name, func(t *testing.T) {
			dir := t.TempDir()
			img, want := homeImage(t, dir, v, size, uint64(100+i))
			w, err := OpenInPlace(img, InPlaceOptions{Logger: testLogger(t)})
			require.NoError(t, err)
			require.Equal(t, int64(size), w.Size())
			for _, op := range genOps(uint64(i), size, 200) {
				require.NoError(t, op.apply(w))
				copy(want[op.off:], op.data())
			}
			// Unaligned writes and zeros, across cluster boundaries.
			r := rand.New(rand.NewPCG(uint64(i), 9))
			for range 40 {
				off := r.Int64N(size - 70000)
				n := 1 + r.Int64N(70000)
				if r.IntN(3) == 0 {
					require.NoError(t, w.Zero(off, n))
					clear(want[off : off+n])
					continue
				}
				p := make([]byte, n)
				for j := range p {
					p[j] = byte(r.Uint32())
				}
				_, err := w.WriteAt(p, off)
				require.NoError(t, err)
				copy(want[off:], p)
			}
			require.NoError(t, w.Sync())
			_, err = w.WriteAt([]byte{1}, size)
			require.ErrorIs(t, err, ErrOutOfRange)
			require.NoError(t, w.Close())

			code, out := qemuCheck(t, v, img)
			require.Equal(t, 0, code, "qemu-img check not clean:\n%s", out)
			ref := filepath.Join(dir, "want.raw")
			require.NoError(t, os.WriteFile(ref, want, 0o600))
			run(t, qemuImg, "compare", "-f", v.format, "-F", "raw", img, ref)
		})
	}
}

func TestInPlaceRefusals(t *testing.T) {
	qemuImg := needTool(t, "qemu-img")
	dir := t.TempDir()
	mk := func(name string, args ...string) string {
		p := filepath.Join(dir, name)
		run(t, qemuImg, append(append([]string{"create", "-q"}, args[:len(args)-1]...), p, args[len(args)-1])...)
		return p
	}
	base := mk("base.qcow2", "-f", "qcow2", "1M")
	cases := []struct {
		name string
		path string
		want error
	}{
		{"vmdk", mk("d.vmdk", "-f", "vmdk", "1M"), ErrUnsupported},
		{"vhd", mk("d.vhd", "-f", "vpc", "1M"), ErrUnsupported},
		{"qcow2 with backing file", mk("child.qcow2", "-f", "qcow2", "-F", "qcow2", "-b", base, "1M"), ErrUnsupported},
	}
	snap := mk("snap.qcow2", "-f", "qcow2", "1M")
	run(t, qemuImg, "snapshot", "-c", "s1", snap)
	cases = append(cases, struct {
		name string
		path string
		want error
	}{"qcow2 with snapshot", snap, ErrUnsupported})
	bitmap := mk("bitmap.qcow2", "-f", "qcow2", "1M")
	run(t, qemuImg, "bitmap", "--add", bitmap, "b0")
	cases = append(cases, struct {
		name string
		path string
		want error
	}{"qcow2 with a persistent bitmap", bitmap, ErrUnsupported},
		struct {
			name string
			path string
			want error
		}{"qcow2 with 1-bit refcounts", mk("rc1.qcow2", "-f", "qcow2", "-o", "refcount_bits=1", "1M"), ErrUnsupported})
	dirty := mk("dirty.qcow2", "-f", "qcow2", "1M")
	f, err := os.OpenFile(dirty, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{0, 0, 0, 0, 0, 0, 0, 1}, 72) // incompatible feature bit 0: dirty
	require.NoError(t, err)
	require.NoError(t, f.Close())
	cases = append(cases, struct {
		name string
		path string
		want error
	}{"dirty qcow2", dirty, ErrDirty})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, err := os.ReadFile(c.path)
			require.NoError(t, err)
			_, err = OpenInPlace(c.path, InPlaceOptions{})
			require.ErrorIs(t, err, c.want)
			var fe *FormatError
			require.ErrorAs(t, err, &fe)
			t.Log(err)
			after, err := os.ReadFile(c.path)
			require.NoError(t, err)
			require.Equal(t, before, after, "a refused image was modified")
		})
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

func TestInPlaceRefusesDifferencingVHDX(t *testing.T) {
	fx := makeDifferencingVHDX(t, needQemu(t), func(g string) string { return "{" + strings.ToLower(g) + "}" })
	before, err := os.ReadFile(fx.child)
	require.NoError(t, err)
	_, err = OpenInPlace(fx.child, InPlaceOptions{})
	require.ErrorIs(t, err, ErrUnsupported)
	t.Log(err)
	after, err := os.ReadFile(fx.child)
	require.NoError(t, err)
	require.Equal(t, before, after, "a refused differencing VHDX was modified")
}

// TestInPlaceReadSeesGuestBytes: the writer's read side returns the guest
// content qemu-img wrote, and after writes and zeros (fresh clusters,
// compressed clusters rewritten, zeroed ranges) the content the test
// keeps, for every kind of home image.
func TestInPlaceReadSeesGuestBytes(t *testing.T) {
	needTool(t, "qemu-img")
	const size = 3 << 20
	for i, v := range ipVariants {
		t.Run(v.name, func(t *testing.T) {
			img, want := homeImage(t, t.TempDir(), v, size, uint64(300+i))
			w, err := OpenInPlace(img, InPlaceOptions{Logger: testLogger(t)})
			require.NoError(t, err)
			defer w.Close()
			got := make([]byte, size)
			_, err = w.ReadAt(got, 0)
			require.NoError(t, err)
			require.True(t, bytes.Equal(want, got), "before writes: differs at %d", firstDiff(got, want))
			for _, op := range genOps(uint64(i), size, 100) {
				require.NoError(t, op.apply(w))
				copy(want[op.off:], op.data())
			}
			// Unaligned reads across cluster and block boundaries.
			r := rand.New(rand.NewPCG(uint64(i), 11))
			for range 50 {
				off := r.Int64N(size - 70000)
				p := make([]byte, 1+r.Int64N(70000))
				_, err := w.ReadAt(p, off)
				require.NoError(t, err)
				require.True(t, bytes.Equal(want[off:off+int64(len(p))], p), "read of %d bytes at %d", len(p), off)
			}
			_, err = w.ReadAt(make([]byte, 2), size-1)
			require.ErrorIs(t, err, ErrOutOfRange)
		})
	}
}
