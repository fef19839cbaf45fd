package disk

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/stretchr/testify/require"
)

// qemu-img cannot create differencing VHDX, so this test builds one from
// a qemu-made VHDX by patching its metadata and BAT by hand ([MS-VHDX]
// 2.5 and 2.6.2.6) and checks our reading against a guest view computed
// independently: the parent as qemu reads it, with the child's blocks
// laid over it.

// vhdxLocator encodes a parent locator item.
func vhdxLocator(kv [][2]string) []byte {
	le := binary.LittleEndian
	head := 20 + 12*len(kv)
	var strs []byte
	entries := make([]byte, 12*len(kv))
	enc := func(s string) []byte {
		u := utf16.Encode([]rune(s))
		b := make([]byte, 2*len(u))
		for i, c := range u {
			le.PutUint16(b[2*i:], c)
		}
		return b
	}
	for i, p := range kv {
		k, v := enc(p[0]), enc(p[1])
		e := entries[12*i:]
		le.PutUint32(e, uint32(head+len(strs)))
		strs = append(strs, k...)
		le.PutUint32(e[4:], uint32(head+len(strs)))
		strs = append(strs, v...)
		le.PutUint16(e[8:], uint16(len(k)))
		le.PutUint16(e[10:], uint16(len(v)))
	}
	out := make([]byte, 20, head+len(strs))
	copy(out, vhdxParentLocTypeVHD[:])
	le.PutUint16(out[18:], uint16(len(kv)))
	return append(append(out, entries...), strs...)
}

type diffFixture struct {
	parent, child, expected string
	dir                     string
}

// makeDifferencingVHDX builds parent.vhdx (qemu) and child.vhdx (patched)
// and the raw file the child must read as.
func makeDifferencingVHDX(t *testing.T, q qemuTools, linkage func(parentGUID string) string) diffFixture {
	t.Helper()
	dir := t.TempDir()
	base := baseImage(t, dir)
	parent := filepath.Join(dir, "parent.vhdx")
	q.convert(t, base, "raw", parent, "vhdx", "-o", "block_size=1M")
	pb, err := os.ReadFile(parent)
	require.NoError(t, err)
	pl := readVHDXLayout(t, pb)

	child := filepath.Join(dir, "child.vhdx")
	run(t, q.img, "create", "-q", "-f", "vhdx", "-o", "block_size=1M", child, "67110400")
	b, err := os.ReadFile(child)
	require.NoError(t, err)
	l := readVHDXLayout(t, b)
	le := binary.LittleEndian
	regions, err := parseVHDXRegionTable(b[vhdxRegionOff1:])
	require.NoError(t, err)
	var metaOff int64
	var batLen int64
	for _, r := range regions {
		switch r.id {
		case vhdxMetadataGUID:
			metaOff = int64(r.off)
		case vhdxBATGUID:
			batLen = int64(r.length)
		}
	}
	// Metadata: HasParent, and a parent locator item.
	n := int(le.Uint16(b[metaOff+10:]))
	for i := 0; i < n; i++ {
		e := b[metaOff+32+int64(32*i):]
		var id guid
		copy(id[:], e)
		if id == vhdxFileParamsGUID {
			item := metaOff + int64(le.Uint32(e[16:]))
			le.PutUint32(b[item+4:], le.Uint32(b[item+4:])|2)
		}
	}
	loc := vhdxLocator([][2]string{
		{"parent_linkage", linkage(pl.h.dataWrite.String())},
		{"relative_path", `.\parent.vhdx`},
		{"absolute_win32_path", `C:\VMs\parent.vhdx`},
	})
	locOff := int64(96 << 10)
	copy(b[metaOff+locOff:], loc)
	e := b[metaOff+32+int64(32*n):]
	copy(e, vhdxParentLocGUID[:])
	le.PutUint32(e[16:], uint32(locOff))
	le.PutUint32(e[20:], uint32(len(loc)))
	le.PutUint32(e[24:], vhdxMetaIsRequired)
	le.PutUint16(b[metaOff+10:], uint16(n+1))

	// BAT of a differencing disk: chunkRatio payload entries, then the
	// chunk's sector bitmap entry.
	const blk = 1 << 20
	require.Equal(t, int64(blk), l.blockSize)
	require.GreaterOrEqual(t, batLen, (l.chunkRatio+1)*8)
	clear(b[l.batOff : l.batOff+batLen])
	end := (int64(len(b)) + vhdxMB - 1) &^ (vhdxMB - 1)
	data0, data3, bitmapAt := end, end+blk, end+2*blk
	b = append(b, make([]byte, end+3*blk-int64(len(b)))...)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := data0; i < bitmapAt; i++ {
		b[i] = byte(rng.Uint32())
	}
	set := func(idx int64, v uint64) { le.PutUint64(b[l.batOff+idx*8:], v) }
	set(0, uint64(data0)|vhdxBlockFullyPresent)
	set(2, vhdxBlockZero)
	set(3, uint64(data3)|vhdxBlockPartiallyPresent)
	set(4, vhdxBlockUnmapped)
	set(6, vhdxBlockPartiallyPresent|uint64(data3)) // present block, bitmap all clear: the parent shows
	set(l.chunkRatio, uint64(bitmapAt)|vhdxSBBlockPresent)
	perBlock := int64(blk / 512)
	var present []int64 // sectors of block 3 held by the child
	for s := int64(0); s < perBlock; s++ {
		if s < 64 || (s >= 164 && s < 1000) || s == perBlock-1 {
			bit := 3*perBlock + s
			b[bitmapAt+bit/8] |= 1 << (bit % 8)
			present = append(present, s)
		}
	}
	require.NoError(t, os.WriteFile(child, b, 0o644))

	// The expected guest view.
	want, err := os.ReadFile(q.toRaw(t, parent, "vhdx"))
	require.NoError(t, err)
	copy(want[0:blk], b[data0:data0+blk])
	clear(want[2*blk : 3*blk])
	for _, s := range present {
		copy(want[3*blk+s*512:3*blk+s*512+512], b[data3+s*512:data3+s*512+512])
	}
	clear(want[4*blk : 5*blk])
	expected := filepath.Join(dir, "expected.raw")
	require.NoError(t, os.WriteFile(expected, want, 0o644))
	return diffFixture{parent: parent, child: child, expected: expected, dir: dir}
}

func TestVHDXDifferencing(t *testing.T) {
	q := needQemu(t)
	fx := makeDifferencingVHDX(t, q, func(g string) string { return "{" + strings.ToLower(g) + "}" })
	src, err := Open(fx.child, OpenOptions{})
	require.NoError(t, err)
	defer src.Close()
	require.Equal(t, FormatVHDX, src.Format())
	compareWithFile(t, src, fx.expected)
	info, err := Probe(fx.child)
	require.NoError(t, err)
	require.Equal(t, "differencing", info.Subformat)
	require.Equal(t, []string{fx.parent}, info.Backing)

	// A moved child finds its parent through BaseDir.
	other := t.TempDir()
	moved := filepath.Join(other, "child.vhdx")
	run(t, "cp", fx.child, moved)
	src2, err := Open(moved, OpenOptions{BaseDir: fx.dir})
	require.NoError(t, err)
	defer src2.Close()
	compareWithFile(t, src2, fx.expected)

	// Written out, the chain becomes one standalone disk.
	out := filepath.Join(other, "flat.vhdx")
	require.NoError(t, Write(t.Context(), out, FormatVHDX, src, WriteOptions{}))
	checkWritten(t, q, fx.expected, out, FormatVHDX)
}

func TestVHDXDifferencingWrongParent(t *testing.T) {
	q := needQemu(t)
	fx := makeDifferencingVHDX(t, q, func(string) string { return "{01234567-89ab-cdef-0123-456789abcdef}" })
	_, err := Open(fx.child, OpenOptions{})
	fe := requireRefused(t, err, FormatVHDX, fx.child, ErrCorrupt)
	require.Contains(t, fe.Reason, "parent changed")
	require.NoError(t, os.Remove(fx.parent))
	_, err = Open(fx.child, OpenOptions{})
	require.ErrorIs(t, err, os.ErrNotExist)
}
