//go:build linux

package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/internal/testenv"
)

// This file checks from outside the agent where a re-protect wrote the
// home disk: a reflink copy of the home disk taken before the re-protect
// shares every data extent with it, so afterwards every file page whose
// physical mapping (FIEMAP) is no longer the copy's was written (or
// punched, or allocated) by someone: the home agent.

const (
	wBlock = 64 << 10 // the comparison's block: Ferry's block size
	wPage  = 4096     // the filesystem block of the XFS mount

	fsIocFiemap       = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapFlagSync    = 0x1
	fiemapExtentLast  = 0x1
	fiemapExtentUnkn  = 0x2
	fiemapExtentDelal = 0x4
	fiemapExtentShare = 0x2000
	fiemapHeader      = 32
	fiemapExtentSize  = 56
	fiemapBatch       = 256
)

// fiPage is one file page's mapping: phys 0 is a hole.
type fiPage struct {
	phys   uint64
	shared bool
}

// fiemapPages maps every wPage page of path to its physical byte address
// through FS_IOC_FIEMAP (with FIEMAP_FLAG_SYNC, so delayed allocations are
// resolved first). x/sys/unix has no FIEMAP wrapper: a raw ioctl.
func fiemapPages(t *testing.T, path string) []fiPage {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(t, err)
	pages := make([]fiPage, (st.Size()+wPage-1)/wPage)
	buf := make([]byte, fiemapHeader+fiemapBatch*fiemapExtentSize)
	le := binary.LittleEndian
	for start := uint64(0); start < uint64(st.Size()); {
		clear(buf)
		le.PutUint64(buf[0:], start)
		le.PutUint64(buf[8:], ^uint64(0)-start)
		le.PutUint32(buf[16:], fiemapFlagSync)
		le.PutUint32(buf[24:], fiemapBatch)
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
			require.NoError(t, fmt.Errorf("FS_IOC_FIEMAP %s: %w", path, e))
		}
		n := int(le.Uint32(buf[20:]))
		if n == 0 {
			break
		}
		last := false
		for i := range n {
			e := buf[fiemapHeader+i*fiemapExtentSize:]
			logical, physical, length := le.Uint64(e[0:]), le.Uint64(e[8:]), le.Uint64(e[16:])
			flags := le.Uint32(e[40:])
			require.Zero(t, flags&(fiemapExtentUnkn|fiemapExtentDelal), "%s: extent at %d has no known location after FIEMAP_FLAG_SYNC (flags %#x)", path, logical, flags)
			require.Zero(t, logical%wPage, "%s: extent at %d not page aligned", path, logical)
			for off := logical; off < logical+length && off < uint64(st.Size()); off += wPage {
				pages[off/wPage] = fiPage{phys: physical + (off - logical), shared: flags&fiemapExtentShare != 0}
			}
			start = logical + length
			last = flags&fiemapExtentLast != 0
		}
		if last {
			break
		}
	}
	return pages
}

// dataPages says, page by page, whether path holds data there as
// SEEK_DATA/SEEK_HOLE see it (the allocation a reader of the file sees).
//
// The file's clean cached pages are dropped first (fsync, then
// POSIX_FADV_DONTNEED): XFS reports a hole as data when zero pages a
// read left in the cache lie over an unwritten extent of its
// copy-on-write fork — what copy-on-write of a shared neighbour leaves
// behind (the CoW extent size hint rounds it up to 128 KiB) — although
// nothing is allocated there for the file (FIEMAP shows the hole). Seen
// on Linux 6.18: clone a file, punch 64 KiB, write the next 64 KiB,
// read both: SEEK_DATA finds data at the punched offset until the cache
// is dropped.
func dataPages(t *testing.T, path string) []bool {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED))
	pages := make([]bool, (st.Size()+wPage-1)/wPage)
	for off := int64(0); off < st.Size(); {
		data, err := f.Seek(off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		require.NoError(t, err)
		hole, err := f.Seek(data, unix.SEEK_HOLE)
		require.NoError(t, err)
		for p := data / wPage; p < (hole+wPage-1)/wPage && p < int64(len(pages)); p++ {
			pages[p] = true
		}
		off = hole
	}
	return pages
}

// reflinkCopy clones src into dst with FICLONE: dst shares every extent.
func reflinkCopy(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	require.NoError(t, err)
	defer out.Close()
	require.NoError(t, unix.IoctlFileClone(int(out.Fd()), int(in.Fd())), "FICLONE %s → %s (the mount is XFS with reflink=1)", src, dst)
}

// blockPages is the range of pages of 64 KiB block b.
func blockPages(b int) (int, int) { return b * wBlock / wPage, (b + 1) * wBlock / wPage }

// anyIn reports whether any of pages[from:to] is true.
func anyIn(pages []bool, from, to int) bool { return slices.Contains(pages[from:to], true) }

// writeBoth writes p at off of the disk at path and of the mirror.
func (r *roundTrip) writeBoth(t *testing.T, path string, off int64, p []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(p, off)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	copy(r.mirror[off:], p)
}

// pickBlocks takes n 64 KiB blocks at random that satisfy ok and are not
// in used, adding them to used.
func (r *roundTrip) pickBlocks(t *testing.T, n int, used map[int]bool, what string, ok func(b int) bool) []int {
	t.Helper()
	var cand []int
	for b := range len(r.mirror) / wBlock {
		if !used[b] && ok(b) {
			cand = append(cand, b)
		}
	}
	require.GreaterOrEqual(t, len(cand), n, "the home image has fewer than %d blocks that are %s", n, what)
	r.rng.Shuffle(len(cand), func(i, j int) { cand[i], cand[j] = cand[j], cand[i] })
	cand = cand[:n]
	for _, b := range cand {
		used[b] = true
	}
	slices.Sort(cand)
	return cand
}

// TestReprotectWritesHomeOnlyWhereItDiffered: issue 11's "the home disk
// is written only where it differed (checked from outside the agent:
// content and allocation before and after)". The raw home disk (holes and
// data) is on a loop-mounted XFS with reflink. After failover and commit
// the recovery site writes its live disk in ways that change the content
// (random 4 KiB writes over data and holes, whole blocks zeroed) and in
// ways that do not (a 4 KiB write undone again, a block rewritten with its
// own bytes, zeros written over holes and over blocks the home disk holds
// as allocated zeros). Just before the re-protect the test clones the
// home disk (FICLONE) and records each page's physical mapping (FIEMAP)
// and allocation (SEEK_DATA/SEEK_HOLE); it checks that the clone shares
// every data extent (else nothing could be seen). After the re-protect a
// page whose mapping is no longer the clone's was written, punched or
// allocated. Required:
//   - every block written is one whose content differed between the home
//     disk before and the point moved to (the test's own mirror), and
//     every block that differed was written and now equals the mirror;
//   - blocks that were holes and are zeros at the point are still holes;
//   - blocks that had non-zero data and are zeros at the point are holes
//     now: Ferry's in-place raw writer punches zero blocks
//     (agent/disk rawInPlace.Zero) where the filesystem can, and XFS can;
//   - blocks the home disk held as allocated zeros that stay zeros keep
//     their data extents, untouched.
func TestReprotectWritesHomeOnlyWhereItDiffered(t *testing.T) {
	testenv.RequireRoot(t)
	const size = 32 << 20
	r := newRoundTrip(t, size) // the home image is on an XFS (reflink=1) loop mount
	nb := size / wBlock
	zero := make([]byte, wBlock)
	isZero := func(p []byte) bool { return bytes.Equal(p, zero[:len(p)]) }
	blk := func(p []byte, b int) []byte { return p[b*wBlock : (b+1)*wBlock] }

	// At home, before the failover: a few data blocks become allocated
	// zeros (written, not punched), so the point has zero blocks the home
	// disk holds as data.
	homeAlloc := dataPages(t, r.img)
	allData := func(b int) bool {
		from, to := blockPages(b)
		return !slices.Contains(homeAlloc[from:to], false) && !isZero(blk(r.mirror, b))
	}
	allHole := func(b int) bool {
		from, to := blockPages(b)
		return !anyIn(homeAlloc, from, to)
	}
	used := map[int]bool{}
	allocZero := r.pickBlocks(t, 4, used, "all data", allData)
	for _, b := range allocZero {
		r.writeBoth(t, r.img, int64(b)*wBlock, zero)
	}
	r.c.runJob(t, 0, "failover", "vm")
	r.c.runJob(t, 0, "commit", "vm", "--force")
	live := r.site.Hyp.Disks(t, "vm")[0]
	r.requireMirror(t, live, "failed over")

	// At the recovery site. Blocks that end up different:
	zeroed := r.pickBlocks(t, 6, used, "all data", allData)      // whole block zeroed
	holeData := r.pickBlocks(t, 6, used, "holes", allHole)       // 4 KiB of data into a hole
	dataWrites := r.pickBlocks(t, 12, used, "all data", allData) // 4 KiB of new data
	// and blocks written without a change:
	undone := r.pickBlocks(t, 6, used, "all data", allData)    // 4 KiB changed, then put back
	sameBytes := r.pickBlocks(t, 6, used, "all data", allData) // rewritten with their own bytes
	holeZeros := r.pickBlocks(t, 6, used, "holes", allHole)    // zeros written over a hole
	page := make([]byte, wPage)
	randPage := func() []byte {
		for i := range page {
			page[i] = byte(r.rng.Uint32())
		}
		return page
	}
	pageOff := func(b int) int64 { return int64(b)*wBlock + r.rng.Int64N(wBlock/wPage)*wPage }
	for _, b := range zeroed {
		r.writeBoth(t, live, int64(b)*wBlock, zero)
	}
	for _, b := range append(slices.Clone(holeData), dataWrites...) {
		r.writeBoth(t, live, pageOff(b), randPage())
	}
	for _, b := range undone {
		off := pageOff(b)
		old := bytes.Clone(r.mirror[off : off+wPage])
		r.writeBoth(t, live, off, randPage())
		r.writeBoth(t, live, off, old)
	}
	for _, b := range sameBytes {
		r.writeBoth(t, live, int64(b)*wBlock, bytes.Clone(blk(r.mirror, b)))
	}
	for _, b := range append(slices.Clone(holeZeros), allocZero...) {
		r.writeBoth(t, live, int64(b)*wBlock, zero)
	}
	r.requireMirror(t, live, "the recovery site's disk after its writes")
	touched := map[int]bool{}
	for _, set := range [][]int{zeroed, holeData, dataWrites, undone, sameBytes, holeZeros, allocZero} {
		for _, b := range set {
			touched[b] = true
		}
	}

	// Before the re-protect: the home disk's content, allocation and
	// mapping, and a reflink copy sharing its extents.
	probe := filepath.Join(filepath.Dir(r.img), "written-probe")
	require.NoError(t, os.Mkdir(probe, 0o700))
	clone := filepath.Join(probe, "home-before.img")
	reflinkCopy(t, r.img, clone)
	before, err := os.ReadFile(r.img)
	require.NoError(t, err)
	cloneBytes, err := os.ReadFile(clone)
	require.NoError(t, err)
	require.True(t, bytes.Equal(before, cloneBytes), "the reflink copy reads as the home disk")
	allocBefore := dataPages(t, r.img)
	homeMap, cloneMap := fiemapPages(t, r.img), fiemapPages(t, clone)
	dataSeen := 0
	for p := range homeMap {
		if allocBefore[p] {
			require.NotZero(t, homeMap[p].phys, "page %d: SEEK_DATA says data, FIEMAP a hole", p)
		}
		if homeMap[p].phys == 0 {
			require.Zero(t, cloneMap[p].phys, "page %d: a hole at home, mapped in the copy", p)
			continue
		}
		dataSeen++
		require.Equal(t, homeMap[p].phys, cloneMap[p].phys, "page %d: the copy does not share the home disk's extent", p)
		require.True(t, homeMap[p].shared && cloneMap[p].shared, "page %d: the extent is not flagged shared (FIEMAP_EXTENT_SHARED)", p)
	}
	require.Positive(t, dataSeen, "the home disk has data extents to share")
	t.Logf("before: %d of %d pages of the home disk are data, all shared with the reflink copy", dataSeen, len(homeMap))

	// What differs between the home disk and the point the re-protect
	// moves it to (the recovery site's disk, as the mirror holds it).
	differed := map[int]bool{}
	for b := range nb {
		if !bytes.Equal(blk(before, b), blk(r.mirror, b)) {
			differed[b] = true
		}
	}
	for _, set := range [][]int{zeroed, holeData, dataWrites} {
		for _, b := range set {
			require.True(t, differed[b], "block %d was meant to differ", b)
		}
	}
	for _, set := range [][]int{undone, sameBytes, holeZeros, allocZero} {
		for _, b := range set {
			require.False(t, differed[b], "block %d was meant to be written without a change", b)
		}
	}

	r.c.runJob(t, 0, "reprotect", "vm", "--stop-source")
	r.requireMirror(t, r.img, "home disk after re-protect")

	// After: which pages lost their mapping to the copy's extents.
	after, err := os.ReadFile(r.img)
	require.NoError(t, err)
	allocAfter := dataPages(t, r.img)
	homeAfter := fiemapPages(t, r.img)
	require.Equal(t, cloneMap, fiemapPages(t, clone), "the reflink copy's own mapping did not change")
	cloneBytes, err = os.ReadFile(clone)
	require.NoError(t, err)
	require.True(t, bytes.Equal(before, cloneBytes), "the reflink copy still reads as the home disk before")

	for p := range homeAfter {
		require.Equal(t, homeAfter[p].phys != 0, allocAfter[p], "page %d: SEEK_DATA and FIEMAP disagree on the home disk's allocation", p)
	}

	written := map[int]int{} // block → pages remapped
	for p := range homeAfter {
		if homeAfter[p].phys != cloneMap[p].phys {
			written[p*wPage/wBlock]++
		}
	}
	var wrongly, missed []string
	for b := range nb {
		switch {
		case written[b] > 0 && !differed[b]:
			wrongly = append(wrongly, fmt.Sprintf("block %d (offset %d, %d pages remapped, touched at the recovery site: %v, zeros: %v)",
				b, b*wBlock, written[b], touched[b], isZero(blk(before, b))))
		case differed[b] && written[b] == 0:
			missed = append(missed, fmt.Sprintf("block %d (offset %d)", b, b*wBlock))
		}
		if differed[b] {
			require.True(t, bytes.Equal(blk(after, b), blk(r.mirror, b)), "block %d differed and does not hold the point's content now", b)
		}
	}
	require.Empty(t, wrongly, "the home disk was written where it did not differ from the point moved to")
	require.Empty(t, missed, "blocks whose content changed kept the copy's extents: the probe does not see writes")
	require.NotEmpty(t, written, "the re-protect wrote no block of the home disk")
	notDiffering := 0
	for b := range touched {
		if !differed[b] {
			notDiffering++
		}
	}
	t.Logf("after: %d blocks of %d written (%d differed); %d blocks written at the recovery site without a change were left alone",
		len(written), nb, len(differed), notDiffering)

	// Allocation, as a reader of the file sees it.
	for b := range nb {
		from, to := blockPages(b)
		if !isZero(blk(r.mirror, b)) {
			continue
		}
		switch {
		case !anyIn(allocBefore, from, to):
			require.False(t, anyIn(allocAfter, from, to), "block %d was a hole and is zeros at the point: it must still be a hole", b)
		case differed[b]:
			require.False(t, anyIn(allocAfter, from, to), "block %d had data and is zeros at the point: Ferry punches it (rawInPlace.Zero), so it must be a hole", b)
		default:
			require.Equal(t, allocBefore[from:to], allocAfter[from:to], "block %d held allocated zeros and stays zeros: its allocation must not change", b)
		}
	}
	for _, b := range zeroed {
		from, to := blockPages(b)
		require.False(t, anyIn(allocAfter, from, to), "zeroed block %d is a hole", b)
	}
	for _, b := range allocZero {
		from, to := blockPages(b)
		require.False(t, slices.Contains(allocAfter[from:to], false), "allocated-zero block %d is still allocated", b)
	}
}
