package disk

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// differingRanges byte-compares two files (the test's own oracle), in
// 512-byte units, and returns where they differ (a longer file differs
// over its tail).
func differingRanges(t *testing.T, a, b []byte) []Extent {
	t.Helper()
	var out []Extent
	n := max(len(a), len(b))
	for off := 0; off < n; off += 512 {
		x, y := window(a, off), window(b, off)
		if !bytes.Equal(x, y) {
			out = appendExtent(out, Extent{int64(off), 512})
		}
	}
	return out
}

func window(b []byte, off int) []byte {
	w := make([]byte, 512)
	if off < len(b) {
		copy(w, b[off:])
	}
	return w
}

func covered(list []Extent, off, n int64) bool {
	for _, e := range list {
		if e.Offset <= off && off+n <= e.End() {
			return true
		}
	}
	return false
}

// TestChangedRanges: an image made by qemu-img (qcow2; VHDX, VHD and
// sparse VMDK too) is copied (the base), then changed by qemu-io: a
// rewrite of allocated data, a write into an unallocated cluster (new
// cluster, table update) and a discard. ChangedRanges, told which
// container bytes differ, covers every guest byte whose content differs
// (checked against qemu-img's own reading of both images) and reports a
// small part of the disk; told that nothing differs, it reports nothing.
func TestChangedRanges(t *testing.T) {
	q := needQemu(t)
	for _, tc := range []struct {
		name, qemu string
		format     Format
		opts       []string
	}{
		{"qcow2", "qcow2", FormatQCOW2, nil},
		{"vhdx", "vhdx", FormatVHDX, []string{"-o", "block_size=1M"}},
		{"vhd", "vpc", FormatVHD, nil},
		{"vmdk", "vmdk", FormatVMDK, []string{"-o", "subformat=monolithicSparse"}},
	} {
		t.Run(tc.name, func(t *testing.T) { testChangedRanges(t, q, tc.qemu, tc.format, tc.opts) })
	}
}

func testChangedRanges(t *testing.T, q qemuTools, qemuFmt string, format Format, opts []string) {
	dir := t.TempDir()
	const size = 16 << 20
	raw := filepath.Join(dir, "src.raw")
	img := make([]byte, size)
	for i := 0; i < 8<<20; i++ { // data in the first half, holes after
		img[i] = byte(i*7 + i>>13)
	}
	require.NoError(t, os.WriteFile(raw, img, 0o600))
	cur := filepath.Join(dir, "cur."+qemuFmt)
	q.convert(t, raw, "raw", cur, qemuFmt, opts...)
	base := filepath.Join(dir, "base."+qemuFmt)
	b, err := os.ReadFile(cur)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(base, b, 0o600))

	bs, err := Open(base, OpenOptions{})
	require.NoError(t, err)
	defer bs.Close()
	require.Equal(t, format, bs.Format())
	none, err := func() ([]Extent, error) {
		cs, err := Open(cur, OpenOptions{})
		require.NoError(t, err)
		defer cs.Close()
		return ChangedRanges(context.Background(), bs, cs, nil)
	}()
	require.NoError(t, err)
	require.Empty(t, none, "no container byte changed: no guest byte did")

	run(t, q.io, "-f", qemuFmt,
		"-c", "write -P 0x11 1048576 4096", // rewrite of allocated data
		"-c", fmt.Sprintf("write -P 0x22 %d 65536", 12<<20), // a new cluster
		"-c", "discard 4194304 65536", // allocated -> zero, where the format supports it
		cur)
	a, err := os.ReadFile(base)
	require.NoError(t, err)
	c, err := os.ReadFile(cur)
	require.NoError(t, err)
	host := differingRanges(t, a, c)
	require.NotEmpty(t, host)

	cs, err := Open(cur, OpenOptions{})
	require.NoError(t, err)
	defer cs.Close()
	got, err := ChangedRanges(context.Background(), bs, cs, host)
	require.NoError(t, err)

	refA, err := os.ReadFile(q.toRaw(t, base, qemuFmt))
	require.NoError(t, err)
	refC, err := os.ReadFile(q.toRaw(t, cur, qemuFmt))
	require.NoError(t, err)
	require.Equal(t, len(refA), len(refC))
	var changed, total int64
	for x := 0; x+512 <= len(refA); x += 512 {
		if !bytes.Equal(refA[x:x+512], refC[x:x+512]) {
			changed += 512
			require.True(t, covered(got, int64(x), 512), "guest bytes at %d changed but were not reported (got %v)", x, got)
		}
	}
	for _, e := range got {
		total += e.Length
	}
	require.GreaterOrEqual(t, changed, int64(4096+65536), "precondition: both writes changed the guest disk")
	t.Logf("%s: %d guest bytes changed; reported %d bytes in %d ranges: %v", qemuFmt, changed, total, len(got), got)
	require.LessOrEqual(t, total, int64(len(refA)/4), "only what changed is reported, not the disk")

	other, err := Open(raw, OpenOptions{})
	require.NoError(t, err)
	defer other.Close()
	_, err = ChangedRanges(context.Background(), other, cs, host)
	require.ErrorIs(t, err, ErrNotComparable)
}
