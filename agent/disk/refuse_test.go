package disk

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// patch copies an image and changes bytes of the copy.
func patch(t *testing.T, src, dst string, edit func(b []byte) []byte) string {
	t.Helper()
	b, err := os.ReadFile(src)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(dst, edit(b), 0o644))
	return dst
}

// requireRefused checks the typed error: format, path, sentinel, a reason.
func requireRefused(t *testing.T, err error, f Format, path string, sentinel error) *FormatError {
	t.Helper()
	require.ErrorIs(t, err, sentinel)
	var fe *FormatError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, f, fe.Format)
	require.Equal(t, path, fe.Path)
	require.NotEmpty(t, fe.Reason)
	t.Log(err)
	return fe
}

// readAll reads the whole guest view through the extents and returns
// the first error.
func readAll(src Source) error {
	ext, err := src.Extents(context.Background())
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for _, e := range ext {
		for off := e.Offset; off < e.End(); off += int64(len(buf)) {
			n := min(int64(len(buf)), e.End()-off)
			if _, err := src.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
		}
	}
	return nil
}

func TestRefuseQCOW2(t *testing.T) {
	q := needQemu(t)
	dir := t.TempDir()
	base := baseImage(t, dir)
	img := filepath.Join(dir, "good.qcow2")
	q.convert(t, base, "raw", img, "qcow2")
	setIncompat := func(bit uint) func([]byte) []byte {
		return func(b []byte) []byte {
			v := binary.BigEndian.Uint64(b[72:])
			binary.BigEndian.PutUint64(b[72:], v|1<<bit)
			return b
		}
	}

	t.Run("dirty", func(t *testing.T) {
		p := patch(t, img, filepath.Join(dir, "dirty.qcow2"), setIncompat(0))
		_, err := Open(p, OpenOptions{})
		fe := requireRefused(t, err, FormatQCOW2, p, ErrDirty)
		require.Contains(t, fe.Reason, "dirty")
		require.True(t, fe.Retryable())
		// Diagnostics may read it anyway, and the tables are intact.
		src, err := Open(p, OpenOptions{AllowDirty: true})
		require.NoError(t, err)
		defer src.Close()
		compareWithFile(t, src, base)
	})
	t.Run("corrupt bit", func(t *testing.T) {
		p := patch(t, img, filepath.Join(dir, "corrupt.qcow2"), setIncompat(1))
		_, err := Open(p, OpenOptions{AllowDirty: true})
		fe := requireRefused(t, err, FormatQCOW2, p, ErrCorrupt)
		require.False(t, fe.Retryable())
	})
	t.Run("unknown incompatible feature", func(t *testing.T) {
		p := patch(t, img, filepath.Join(dir, "future.qcow2"), setIncompat(40))
		_, err := Open(p, OpenOptions{})
		requireRefused(t, err, FormatQCOW2, p, ErrUnsupported)
	})
	t.Run("encrypted", func(t *testing.T) {
		// Legacy AES: LUKS creation needs a CPU-time benchmark that fails
		// in some VMs; the header says crypt_method either way.
		p := filepath.Join(dir, "aes.qcow2")
		run(t, q.img, "create", "-q", "--object", "secret,id=sec0,data=ferry-test", "-f", "qcow2",
			"-o", "encrypt.format=aes,encrypt.key-secret=sec0", p, "16M")
		_, err := Open(p, OpenOptions{})
		fe := requireRefused(t, err, FormatQCOW2, p, ErrUnsupported)
		require.Contains(t, fe.Reason, "encrypted")
	})
	t.Run("L1 beyond end", func(t *testing.T) {
		p := patch(t, img, filepath.Join(dir, "l1.qcow2"), func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[40:], 1<<40)
			return b
		})
		_, err := Open(p, OpenOptions{})
		requireRefused(t, err, FormatQCOW2, p, ErrCorrupt)
	})
	t.Run("backing loop", func(t *testing.T) {
		a, b := filepath.Join(dir, "loop-a.qcow2"), filepath.Join(dir, "loop-b.qcow2")
		run(t, q.img, "create", "-q", "-f", "qcow2", a, "1M")
		run(t, q.img, "create", "-q", "-f", "qcow2", "-b", "loop-a.qcow2", "-F", "qcow2", b, "1M")
		run(t, q.img, "rebase", "-u", "-f", "qcow2", "-b", "loop-b.qcow2", "-F", "qcow2", a)
		_, err := Open(b, OpenOptions{})
		require.ErrorIs(t, err, ErrUnsupported)
		require.Contains(t, err.Error(), "chain deeper")
	})
}

func TestRefuseVMDK(t *testing.T) {
	q := needQemu(t)
	dir := t.TempDir()
	base := baseImage(t, dir)
	img := filepath.Join(dir, "good.vmdk")
	q.convert(t, base, "raw", img, "vmdk")
	b, err := os.ReadFile(img)
	require.NoError(t, err)
	h, err := parseVMDKSparseHeader(b)
	require.NoError(t, err)
	gd := int64(h.gdOff) * vmdkSectorSize
	gt0 := int64(binary.LittleEndian.Uint32(b[gd:])) * vmdkSectorSize

	t.Run("broken grain table", func(t *testing.T) {
		// Point the first allocated grain of table 0 far past the end.
		p := patch(t, img, filepath.Join(dir, "broken-gt.vmdk"), func(b []byte) []byte {
			for i := int64(0); i < int64(h.gtes); i++ {
				if binary.LittleEndian.Uint32(b[gt0+4*i:]) > 1 {
					binary.LittleEndian.PutUint32(b[gt0+4*i:], 0x7ffffff0)
					break
				}
			}
			return b
		})
		src, err := Open(p, OpenOptions{})
		require.NoError(t, err, "grain tables are checked when used")
		defer src.Close()
		_, err = src.Extents(context.Background())
		fe := requireRefused(t, err, FormatVMDK, p, ErrCorrupt)
		require.Contains(t, fe.Reason, "grain table 0")
		buf := make([]byte, 1<<20)
		_, err = src.ReadAt(buf, 0)
		requireRefused(t, err, FormatVMDK, p, ErrCorrupt)
	})
	t.Run("grain table inside metadata", func(t *testing.T) {
		p := patch(t, img, filepath.Join(dir, "gt-meta.vmdk"), func(b []byte) []byte {
			for i := int64(0); i < int64(h.gtes); i++ {
				if binary.LittleEndian.Uint32(b[gt0+4*i:]) > 1 {
					binary.LittleEndian.PutUint32(b[gt0+4*i:], 2) // the descriptor's sector
					break
				}
			}
			return b
		})
		src, err := Open(p, OpenOptions{})
		require.NoError(t, err)
		defer src.Close()
		requireRefused(t, readAll(src), FormatVMDK, p, ErrCorrupt)
	})
	t.Run("grain directory beyond end", func(t *testing.T) {
		p := patch(t, img, filepath.Join(dir, "broken-gd.vmdk"), func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[gd:], 0x7ffffff0)
			return b
		})
		_, err := Open(p, OpenOptions{})
		fe := requireRefused(t, err, FormatVMDK, p, ErrCorrupt)
		require.Contains(t, fe.Reason, "grain directory entry 0")
	})
	t.Run("unsupported extent type", func(t *testing.T) {
		p := filepath.Join(dir, "rdm.vmdk")
		desc := "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"custom\"\n\n" +
			"RW 2048 VMFSRDM \"rdm-device.vmdk\"\n"
		require.NoError(t, os.WriteFile(p, []byte(desc), 0o644))
		_, err := Open(p, OpenOptions{})
		fe := requireRefused(t, err, FormatVMDK, p, ErrUnsupported)
		require.Contains(t, fe.Reason, "VMFSRDM")
	})
	t.Run("missing flat extent", func(t *testing.T) {
		p := filepath.Join(dir, "lost.vmdk")
		desc := "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n" +
			"RW 2048 FLAT \"lost-flat.vmdk\" 0\n"
		require.NoError(t, os.WriteFile(p, []byte(desc), 0o644))
		_, err := Open(p, OpenOptions{})
		require.ErrorIs(t, err, fs.ErrNotExist)
		var fe *FormatError
		require.ErrorAs(t, err, &fe)
	})
	t.Run("parent changed", func(t *testing.T) {
		parent := filepath.Join(dir, "p.vmdk")
		q.convert(t, base, "raw", parent, "vmdk")
		child := filepath.Join(dir, "c.vmdk")
		run(t, q.img, "create", "-q", "-f", "vmdk", "-b", "p.vmdk", "-F", "vmdk", child)
		// Rewrite the parent's CID in its embedded descriptor, keeping its
		// length: qemu writes it without leading zeros (%x), so it can be
		// shorter than 8 digits.
		patch(t, parent, parent, func(b []byte) []byte {
			i := bytes.Index(b, []byte("CID=")) + 4
			end := i + bytes.IndexByte(b[i:], '\n')
			for k := i; k < end; k++ {
				if b[k] == 'a' {
					b[k] = 'b'
				} else {
					b[k] = 'a'
				}
			}
			return b
		})
		_, err := Open(child, OpenOptions{})
		fe := requireRefused(t, err, FormatVMDK, child, ErrCorrupt)
		require.Contains(t, fe.Reason, "parent changed")
	})
}

func TestRefuseVHDAndVHDX(t *testing.T) {
	q := needQemu(t)
	dir := t.TempDir()
	base := baseImage(t, dir)
	vhd := filepath.Join(dir, "good.vhd")
	q.convert(t, base, "raw", vhd, "vpc")
	vhdx := filepath.Join(dir, "good.vhdx")
	q.convert(t, base, "raw", vhdx, "vhdx", "-o", "block_size=1M")

	t.Run("differencing vhd", func(t *testing.T) {
		p := patch(t, vhd, filepath.Join(dir, "diff.vhd"), func(b []byte) []byte {
			for _, at := range []int{0, len(b) - vhdFooterSize} {
				f := b[at : at+vhdFooterSize]
				binary.BigEndian.PutUint32(f[60:], vhdTypeDifferencing)
				binary.BigEndian.PutUint32(f[64:], vhdChecksum(f, 64))
			}
			return b
		})
		_, err := Open(p, OpenOptions{})
		fe := requireRefused(t, err, FormatVHD, p, ErrUnsupported)
		require.Contains(t, fe.Reason, "differencing")
	})
	t.Run("vhd footer and copy damaged", func(t *testing.T) {
		p := patch(t, vhd, filepath.Join(dir, "nofoot.vhd"), func(b []byte) []byte {
			b[100] ^= 0xff
			b[len(b)-vhdFooterSize+100] ^= 0xff
			return b
		})
		_, err := Open(p, OpenOptions{Format: FormatVHD})
		requireRefused(t, err, FormatVHD, p, ErrCorrupt)
	})
	t.Run("vhdx both headers damaged", func(t *testing.T) {
		p := patch(t, vhdx, filepath.Join(dir, "nohdr.vhdx"), func(b []byte) []byte {
			b[vhdxHeaderOff1+200] ^= 1
			b[vhdxHeaderOff2+200] ^= 1
			return b
		})
		_, err := Open(p, OpenOptions{})
		fe := requireRefused(t, err, FormatVHDX, p, ErrCorrupt)
		require.Contains(t, fe.Reason, "headers")
	})
	t.Run("vhdx one header damaged is fine", func(t *testing.T) {
		p := patch(t, vhdx, filepath.Join(dir, "onehdr.vhdx"), func(b []byte) []byte {
			b[vhdxHeaderOff1+200] ^= 1
			return b
		})
		src, err := Open(p, OpenOptions{})
		require.NoError(t, err)
		defer src.Close()
		compareWithFile(t, src, base)
	})
	t.Run("vhdx unknown required metadata", func(t *testing.T) {
		b, err := os.ReadFile(vhdx)
		require.NoError(t, err)
		regions, err := parseVHDXRegionTable(b[vhdxRegionOff1:])
		require.NoError(t, err)
		var metaOff int64
		for _, r := range regions {
			if r.id == vhdxMetadataGUID {
				metaOff = int64(r.off)
			}
		}
		p := patch(t, vhdx, filepath.Join(dir, "meta.vhdx"), func(b []byte) []byte {
			// Turn the physical sector size item into an unknown required one.
			n := int(binary.LittleEndian.Uint16(b[metaOff+10:]))
			for i := 0; i < n; i++ {
				e := b[metaOff+32+int64(32*i):]
				var id guid
				copy(id[:], e)
				if id == vhdxPhysicalSecGUID {
					copy(e, mustGUID("01234567-89AB-CDEF-0123-456789ABCDEF").bytes())
					binary.LittleEndian.PutUint32(e[24:], vhdxMetaIsRequired)
				}
			}
			return b
		})
		_, err = Open(p, OpenOptions{})
		fe := requireRefused(t, err, FormatVHDX, p, ErrUnsupported)
		require.Contains(t, fe.Reason, "unknown required metadata")
	})
}

func (g guid) bytes() []byte { return g[:] }

// TestTruncatedAndDamaged cuts and flips every kind of image at many
// places: Open or a full read must fail with a *FormatError, or the guest
// bytes must be exactly right. Never a panic, never wrong bytes.
func TestTruncatedAndDamaged(t *testing.T) {
	q := needQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "small.raw")
	writeImage(t, base, imageSpec{size: 8<<20 + 1536, seed: 77, dataAt: []int64{8<<20 + 1536 - 96<<10}})
	type kind struct {
		name, qemuFmt string
		opts          []string
	}
	for _, k := range []kind{
		{"q.qcow2", "qcow2", nil}, {"c.qcow2", "qcow2", []string{"-c"}}, {"d.vhdx", "vhdx", []string{"-o", "block_size=1M"}},
		{"d.vhd", "vpc", nil}, {"s.vmdk", "vmdk", nil}, {"o.vmdk", "vmdk", []string{"-o", "subformat=streamOptimized"}},
	} {
		t.Run(k.name, func(t *testing.T) {
			img := filepath.Join(dir, k.name)
			q.convert(t, base, "raw", img, k.qemuFmt, k.opts...)
			ref := q.toRaw(t, img, k.qemuFmt)
			orig, err := os.ReadFile(img)
			require.NoError(t, err)
			n := int64(len(orig))
			var variants [][]byte
			for _, cut := range []int64{0, 7, 100, 511, 512, 1024, 4096, 65536, 1 << 20, n / 3, n / 2, n - 4096, n - 1024, n - 512, n - 1} {
				if cut >= 0 && cut < n {
					variants = append(variants, orig[:cut])
				}
			}
			// Flip metadata bytes (guest data carries no checksum in any of
			// these formats, so a flipped data byte is simply other data).
			flips := []int64{0, 4, 8, 20, 24, 28, 36, 40, 44, 56, 64, 72, 100}
			switch k.qemuFmt {
			case "vhdx":
				flips = append(flips, 64<<10+70, 128<<10+70, 192<<10+40, 2<<20+40, 2<<20+64<<10, 3<<20)
			case "vpc":
				flips = append(flips, n-512+60, 512+16, 512+30, 1536)
			case "vmdk":
				flips = append(flips, n-1024+60, 512+20)
			}
			for _, at := range flips {
				if at < n {
					b := bytes.Clone(orig)
					b[at] ^= 0xa5
					variants = append(variants, b)
				}
			}
			for i, v := range variants {
				p := filepath.Join(dir, "variant-"+k.name)
				require.NoError(t, os.WriteFile(p, v, 0o644))
				src, err := Open(p, OpenOptions{})
				if err != nil {
					var fe *FormatError
					require.True(t, errors.As(err, &fe), "variant %d: error %v is not a *FormatError", i, err)
					continue
				}
				func() {
					defer src.Close()
					if err := readAll(src); err != nil {
						var fe *FormatError
						require.True(t, errors.As(err, &fe), "variant %d: read error %v is not a *FormatError", i, err)
						return
					}
					if src.Size() != int64(8<<20+1536) {
						return // a flipped size field: a different but self-consistent disk
					}
					if src.Format() == FormatRaw {
						return // damage made it unrecognisable: it is now a raw file, read as such
					}
					checkSameOrFail(t, src, ref, i)
				}()
			}
		})
	}
}

// checkSameOrFail: a damaged image that opened and read without error
// must read exactly the original bytes, or fail at some read.
func checkSameOrFail(t *testing.T, src Source, ref string, variant int) {
	t.Helper()
	want, err := os.ReadFile(ref)
	require.NoError(t, err)
	got := make([]byte, src.Size())
	if _, err := src.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) {
		var fe *FormatError
		require.True(t, errors.As(err, &fe), "variant %d: %v", variant, err)
		return
	}
	if !bytes.Equal(want, got) {
		i := firstDiff(want, got)
		t.Fatalf("variant %d read wrong bytes at %d without an error", variant, i)
	}
}
