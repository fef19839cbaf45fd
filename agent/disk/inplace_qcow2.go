package disk

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"sort"
)

// In-place writing of qcow2 (v2 and v3), from QEMU's docs/interop/qcow2.txt.
//
// Clusters already allocated (refcount 1, no snapshots) are overwritten
// where they are. Everything else — unallocated and zero clusters without
// a host cluster, compressed clusters, missing L2 tables — gets new
// clusters at the end of the file, in this order, each step flushed before
// the next:
//
//  1. data (and new L2 tables) written past the end of the file: nothing
//     references or counts them, so a crash leaves unused tail space;
//  2. their refcounts raised (new refcount blocks first, then the
//     refcount table entries that name them): a crash leaves clusters
//     counted but unreferenced, which qemu-img check calls leaks;
//  3. the L2 (or L1) entries pointed at them: the write is complete;
//  4. the refcounts of replaced compressed clusters lowered (a crash
//     before this leaks them).
//
// No step ever leaves a cluster referenced with a refcount lower than its
// references, which is what qemu-img check calls corruption. Leaks from a
// crash between steps 2 and 3 or 3 and 4 are repaired the next time the
// image is opened in place (repairLeaks), before anything is written.

const (
	qcow2RefTabMask  = ^uint64(0x1ff) // refcount table entries: offset bits 9..63
	qcow2AutoBitmaps = 1 << 0
)

type qcow2InPlace struct {
	f     *os.File
	path  string
	h     *qcow2Header
	opts  InPlaceOptions
	log   *slog.Logger
	cbits int64
	cs    int64
	l2n   int64
	size  int64
	end   int64 // next free host offset, cluster aligned

	l1     []uint64
	l2     map[int64][]uint64 // L2 table offset -> entries
	rt     []uint64           // refcount table
	rbits  int64              // refcount width in bits
	rpb    int64              // refcount entries per block
	rblock map[int64][]byte   // refcount block offset -> contents
	decode func(dst, src []byte) error
}

func openQCOW2InPlace(f *os.File, path string, opts InPlaceOptions) (*qcow2InPlace, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, ioError(FormatQCOW2, path, "stat", err)
	}
	first := make([]byte, min(fi.Size(), 1<<qcow2MaxClusterBits))
	if _, err := f.ReadAt(first, 0); err != nil {
		return nil, ioError(FormatQCOW2, path, "read header", err)
	}
	h, err := parseQCOW2Header(first, fi.Size())
	if err != nil {
		var he *qcow2HeaderError
		if errors.As(err, &he) {
			return nil, &FormatError{Format: FormatQCOW2, Path: path, Reason: he.reason, Err: he.kind}
		}
		return nil, ioError(FormatQCOW2, path, "parse header", err)
	}
	switch {
	case h.incompat&qcow2IncompatDirty != 0:
		return nil, dirtyf(FormatQCOW2, path, "image is marked dirty (lazy refcounts not yet repaired); run qemu-img check -r all first")
	case h.backingName != "":
		return nil, unsupportedf(FormatQCOW2, path, "image has a backing file (%s): writing it in place would need copy-on-write "+
			"from the backing chain; commit or rebase it to a standalone image (qemu-img convert) first", h.backingName)
	case h.nbSnapshots != 0:
		return nil, unsupportedf(FormatQCOW2, path, "image has %d internal snapshots: clusters shared with them would need "+
			"copy-on-write; delete them (qemu-img snapshot -d) or reprotect with --target", h.nbSnapshots)
	case h.autoclear&qcow2AutoBitmaps != 0:
		return nil, unsupportedf(FormatQCOW2, path, "image has persistent dirty bitmaps that in-place writes would make stale; "+
			"remove them (qemu-img bitmap --remove) first")
	case h.refcountOrder < 3 || h.refcountOrder > 6:
		return nil, unsupportedf(FormatQCOW2, path, "refcount width of %d bits is not supported for writing (8..64 are)", 1<<h.refcountOrder)
	}
	w := &qcow2InPlace{f: f, path: path, h: h, opts: opts, log: opts.logger().With("image", path),
		cbits: int64(h.clusterBits), cs: int64(1) << h.clusterBits, size: int64(h.size),
		l2: map[int64][]uint64{}, rblock: map[int64][]byte{}, rbits: int64(1) << h.refcountOrder}
	w.l2n = w.cs / 8
	w.rpb = w.cs * 8 / w.rbits
	w.end = (fi.Size() + w.cs - 1) &^ (w.cs - 1)
	if h.compressionType == qcow2CompressionZstd {
		w.decode = decodeZstd
	} else {
		w.decode = decodeDeflate
	}
	if err := w.load(); err != nil {
		return nil, err
	}
	if h.autoclear != 0 {
		// Autoclear features this writer does not maintain must be
		// cleared by a writer that modifies the image (qcow2.txt).
		var b [8]byte
		if err := w.pwriteSync(b[:], 88, "clear autoclear features"); err != nil {
			return nil, err
		}
		h.autoclear = 0
	}
	if err := w.repairLeaks(); err != nil {
		return nil, err
	}
	return w, nil
}

// load reads the L1 table, every L2 table and the refcount structures.
func (w *qcow2InPlace) load() error {
	l2Cover := w.cs * w.l2n
	n := (w.size + l2Cover - 1) / l2Cover
	buf := make([]byte, n*8)
	if _, err := w.f.ReadAt(buf, int64(w.h.l1Off)); err != nil && n > 0 {
		return ioError(FormatQCOW2, w.path, "read L1 table", err)
	}
	w.l1 = make([]uint64, n)
	for i := range w.l1 {
		w.l1[i] = binary.BigEndian.Uint64(buf[i*8:])
		if off := int64(w.l1[i] & qcow2OffsetMask); off != 0 {
			if _, err := w.table(off); err != nil {
				return err
			}
		}
	}
	rtOff, rtLen := int64(w.h.refcountTableOff), int64(w.h.refcountTableClusters)*w.cs
	if rtOff%w.cs != 0 || rtOff == 0 || rtLen == 0 || rtOff+rtLen > w.end {
		return corruptf(FormatQCOW2, w.path, "refcount table at %#x (%d clusters) invalid", rtOff, w.h.refcountTableClusters)
	}
	buf = make([]byte, rtLen)
	if _, err := w.f.ReadAt(buf, rtOff); err != nil {
		return ioError(FormatQCOW2, w.path, "read refcount table", err)
	}
	w.rt = make([]uint64, rtLen/8)
	for i := range w.rt {
		w.rt[i] = binary.BigEndian.Uint64(buf[i*8:]) & qcow2RefTabMask
		if off := int64(w.rt[i]); off != 0 {
			if off%w.cs != 0 || off+w.cs > w.end {
				return corruptf(FormatQCOW2, w.path, "refcount block at %#x invalid", off)
			}
			b := make([]byte, w.cs)
			if _, err := w.f.ReadAt(b, off); err != nil {
				return ioError(FormatQCOW2, w.path, "read refcount block", err)
			}
			w.rblock[off] = b
		}
	}
	return nil
}

func (w *qcow2InPlace) table(off int64) ([]uint64, error) {
	if t, ok := w.l2[off]; ok {
		return t, nil
	}
	if off%w.cs != 0 || off+w.cs > w.end {
		return nil, corruptf(FormatQCOW2, w.path, "L2 table at %#x invalid", off)
	}
	buf := make([]byte, w.cs)
	if _, err := w.f.ReadAt(buf, off); err != nil {
		return nil, ioError(FormatQCOW2, w.path, "read L2 table", err)
	}
	t := make([]uint64, w.l2n)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(buf[i*8:])
	}
	w.l2[off] = t
	return t, nil
}

// refcount returns the refcount of host cluster index ci.
func (w *qcow2InPlace) refcount(ci int64) uint64 {
	ti, bi := ci/w.rpb, ci%w.rpb
	if ti >= int64(len(w.rt)) || w.rt[ti] == 0 {
		return 0
	}
	return getRef(w.rblock[int64(w.rt[ti])], bi, w.rbits)
}

func getRef(b []byte, i, bits int64) uint64 {
	switch bits {
	case 8:
		return uint64(b[i])
	case 16:
		return uint64(binary.BigEndian.Uint16(b[i*2:]))
	case 32:
		return uint64(binary.BigEndian.Uint32(b[i*4:]))
	default:
		return binary.BigEndian.Uint64(b[i*8:])
	}
}

func putRef(b []byte, i, bits int64, v uint64) {
	switch bits {
	case 8:
		b[i] = byte(v)
	case 16:
		binary.BigEndian.PutUint16(b[i*2:], uint16(v))
	case 32:
		binary.BigEndian.PutUint32(b[i*4:], uint32(v))
	default:
		binary.BigEndian.PutUint64(b[i*8:], v)
	}
}

// setRefcounts durably sets the refcounts of host clusters (index ->
// value). Missing refcount blocks are allocated at the end of the file
// and counted in themselves or another block; blocks are flushed before
// the table entries that name them.
func (w *qcow2InPlace) setRefcounts(want map[int64]uint64) error {
	maxRef := uint64(1)<<w.rbits - 1
	if w.rbits == 64 {
		maxRef = ^uint64(0)
	}
	newBlocks := map[int64]int64{} // table index -> block offset
	pending := want
	for len(pending) > 0 {
		next := map[int64]uint64{}
		for ci := range pending {
			ti := ci / w.rpb
			if ti >= int64(len(w.rt)) {
				return unsupportedf(FormatQCOW2, w.path, "image would need a larger refcount table (host offset %#x); "+
					"grow it with qemu-img amend/convert or reprotect with --target", ci*w.cs)
			}
			if w.rt[ti] == 0 {
				if _, ok := newBlocks[ti]; !ok {
					off := w.end
					w.end += w.cs
					newBlocks[ti] = off
					w.rt[ti] = uint64(off)
					w.rblock[off] = make([]byte, w.cs)
					next[off>>w.cbits] = 1
				}
			}
		}
		for ci, v := range pending {
			if v > maxRef {
				return unsupportedf(FormatQCOW2, w.path, "refcount overflow at host cluster %d", ci)
			}
			ti, bi := ci/w.rpb, ci%w.rpb
			putRef(w.rblock[int64(w.rt[ti])], bi, w.rbits, v)
		}
		pending = next
		for ci, v := range next {
			want[ci] = v
		}
	}
	// Write the touched parts of each block: new blocks whole, existing
	// ones from the first to the last changed entry.
	span := map[int64][2]int64{}
	for ci := range want {
		ti, bi := ci/w.rpb, ci%w.rpb
		off := int64(w.rt[ti])
		if _, isNew := newBlocks[ti]; isNew {
			span[off] = [2]int64{0, w.cs}
			continue
		}
		lo, hi := bi*w.rbits/8, (bi+1)*w.rbits/8
		if s, ok := span[off]; ok {
			lo, hi = min(lo, s[0]), max(hi, s[1])
		}
		span[off] = [2]int64{lo, hi}
	}
	for off, s := range span {
		if _, err := w.f.WriteAt(w.rblock[off][s[0]:s[1]], off+s[0]); err != nil {
			return ioError(FormatQCOW2, w.path, "write refcount block", err)
		}
	}
	if err := w.sync(); err != nil {
		return err
	}
	if len(newBlocks) == 0 {
		return nil
	}
	for ti, off := range newBlocks {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(off))
		if _, err := w.f.WriteAt(b[:], int64(w.h.refcountTableOff)+ti*8); err != nil {
			return ioError(FormatQCOW2, w.path, "write refcount table", err)
		}
	}
	return w.sync()
}

func (w *qcow2InPlace) sync() error {
	if err := w.f.Sync(); err != nil {
		return ioError(FormatQCOW2, w.path, "sync", err)
	}
	return nil
}

func (w *qcow2InPlace) pwriteSync(b []byte, off int64, what string) error {
	if _, err := w.f.WriteAt(b, off); err != nil {
		return ioError(FormatQCOW2, w.path, what, err)
	}
	return w.sync()
}

func (w *qcow2InPlace) Size() int64 { return w.size }

func (w *qcow2InPlace) Sync() error { return w.sync() }

func (w *qcow2InPlace) Close() error {
	err := w.sync()
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = ioError(FormatQCOW2, w.path, "close", cerr)
	}
	return err
}

// compressedHost returns the host byte range of a compressed L2 entry.
func (w *qcow2InPlace) compressedHost(e uint64) (off, n int64) {
	x := 62 - (w.cbits - 8)
	off = int64(e & (1<<x - 1))
	sectors := int64((e>>x)&(1<<(w.cbits-8)-1)) + 1
	return off, sectors*512 - off&511
}

// entry returns the L2 entry of guest cluster gc (0 if no L2 table).
func (w *qcow2InPlace) entry(gc int64) uint64 {
	l2off := int64(w.l1[gc/w.l2n] & qcow2OffsetMask)
	if l2off == 0 {
		return 0
	}
	return w.l2[l2off][gc%w.l2n]
}

// batch collects one WriteAt's or Zero's metadata changes.
type qcow2Batch struct {
	newTables map[int64]int64 // L1 index -> new L2 table offset
	entries   map[int64]uint64
	counts    map[int64]uint64 // host cluster -> new refcount
	frees     []uint64         // replaced compressed entries
	data      bool             // something was written that needs a flush
}

func (w *qcow2InPlace) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange(FormatQCOW2, w.path, off, int64(len(p)), w.size); err != nil {
		return 0, err
	}
	return len(p), w.update(off, int64(len(p)), p)
}

// ReadAt reads guest bytes through the writer's own tables: unallocated
// and zero clusters read zeros (images with a backing file are refused at
// open), compressed clusters are decompressed.
func (w *qcow2InPlace) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange(FormatQCOW2, w.path, off, int64(len(p)), w.size); err != nil {
		return 0, err
	}
	var cbuf []byte
	for done := int64(0); done < int64(len(p)); {
		gc := (off + done) >> w.cbits
		in := (off + done) & (w.cs - 1)
		k := min(w.cs-in, int64(len(p))-done)
		dst := p[done : done+k]
		e := w.entry(gc)
		host := int64(e & qcow2OffsetMask)
		switch {
		case e&qcow2FlagCompressed != 0:
			if cbuf == nil {
				cbuf = make([]byte, w.cs)
			}
			coff, cn := w.compressedHost(e)
			src := make([]byte, cn)
			if _, err := w.f.ReadAt(src, coff); err != nil {
				return int(done), ioError(FormatQCOW2, w.path, "read compressed cluster", err)
			}
			if err := w.decode(cbuf, src); err != nil {
				return int(done), corruptf(FormatQCOW2, w.path, "compressed cluster at %#x: %v", coff, err)
			}
			copy(dst, cbuf[in:])
		case host == 0 || (w.h.version >= 3 && e&qcow2FlagZero != 0):
			clear(dst)
		default:
			if _, err := w.f.ReadAt(dst, host+in); err != nil {
				return int(done), ioError(FormatQCOW2, w.path, "read data", err)
			}
		}
		done += k
	}
	return len(p), nil
}

func (w *qcow2InPlace) Zero(off, n int64) error {
	if err := checkRange(FormatQCOW2, w.path, off, n, w.size); err != nil {
		return err
	}
	return w.update(off, n, nil)
}

// update writes p (or zeros when p is nil) at guest range [off, off+n).
func (w *qcow2InPlace) update(off, n int64, p []byte) error {
	b := &qcow2Batch{newTables: map[int64]int64{}, entries: map[int64]uint64{}, counts: map[int64]uint64{}}
	for done := int64(0); done < n; {
		gc := (off + done) >> w.cbits
		in := (off + done) & (w.cs - 1)
		k := min(w.cs-in, n-done)
		var chunk []byte
		if p != nil {
			chunk = p[done : done+k]
		}
		if err := w.updateCluster(b, gc, in, chunk, k); err != nil {
			return err
		}
		done += k
	}
	return w.commit(b)
}

func (w *qcow2InPlace) updateCluster(b *qcow2Batch, gc, in int64, chunk []byte, k int64) error {
	e := w.entry(gc)
	full := in == 0 && k == w.cs
	host := int64(e & qcow2OffsetMask)
	compressed := e&qcow2FlagCompressed != 0
	zeroFlag := !compressed && w.h.version >= 3 && e&qcow2FlagZero != 0
	if compressed {
		host = 0
	}
	if chunk == nil && full {
		switch {
		case compressed:
			b.entries[gc] = 0
			if w.h.version >= 3 {
				b.entries[gc] = qcow2FlagZero
			}
			b.frees = append(b.frees, e)
		case host == 0 || zeroFlag:
			// Reads zeros already (no backing file).
		case w.h.version >= 3:
			b.entries[gc] = uint64(host) | qcow2FlagZero | qcow2FlagCopied
		default:
			if err := writeZeros(w.f, FormatQCOW2, w.path, host, w.cs); err != nil {
				return err
			}
			b.data = true
		}
		return nil
	}
	if chunk == nil {
		chunk = make([]byte, k)
		if !compressed && (host == 0 || zeroFlag) {
			return nil // a partial zero of a cluster that reads zeros
		}
	}
	if host != 0 && !zeroFlag {
		if _, err := w.f.WriteAt(chunk, host+in); err != nil {
			return ioError(FormatQCOW2, w.path, "write data", err)
		}
		b.data = true
		return nil
	}
	// Build the whole new cluster: old guest content with chunk over it.
	buf := make([]byte, w.cs)
	if compressed {
		coff, cn := w.compressedHost(e)
		src := make([]byte, cn)
		if _, err := w.f.ReadAt(src, coff); err != nil {
			return ioError(FormatQCOW2, w.path, "read compressed cluster", err)
		}
		if err := w.decode(buf, src); err != nil {
			return corruptf(FormatQCOW2, w.path, "compressed cluster at %#x: %v", coff, err)
		}
		b.frees = append(b.frees, e)
	}
	copy(buf[in:], chunk)
	if zeroFlag && host != 0 {
		// A preallocated zero cluster: fill it, then clear the flag.
		if _, err := w.f.WriteAt(buf, host); err != nil {
			return ioError(FormatQCOW2, w.path, "write data", err)
		}
		b.data = true
		b.entries[gc] = uint64(host) | qcow2FlagCopied
		return nil
	}
	d := w.end
	w.end += w.cs
	if _, err := w.f.WriteAt(buf, d); err != nil {
		return ioError(FormatQCOW2, w.path, "write data", err)
	}
	b.data = true
	b.entries[gc] = uint64(d) | qcow2FlagCopied
	b.counts[d>>w.cbits] = 1
	if l1i := gc / w.l2n; w.l1[l1i]&qcow2OffsetMask == 0 {
		if _, ok := b.newTables[l1i]; !ok {
			t := w.end
			w.end += w.cs
			b.newTables[l1i] = t
			b.counts[t>>w.cbits] = 1
		}
	}
	return nil
}

// commit makes a batch durable in the crash-safe order.
func (w *qcow2InPlace) commit(b *qcow2Batch) error {
	if len(b.entries) == 0 && len(b.frees) == 0 {
		return nil // in-place data only: durable at the next Sync
	}
	// 1. new L2 tables, complete with their entries, past the old end.
	for l1i, t := range b.newTables {
		tab := make([]uint64, w.l2n)
		for gc, e := range b.entries {
			if gc/w.l2n == l1i {
				tab[gc%w.l2n] = e
			}
		}
		if _, err := w.f.WriteAt(encodeTable(tab), t); err != nil {
			return ioError(FormatQCOW2, w.path, "write L2 table", err)
		}
		w.l2[t] = tab
	}
	if b.data || len(b.newTables) > 0 {
		if err := w.sync(); err != nil {
			return err
		}
	}
	w.opts.fail(InPlaceStepData)
	// 2. refcounts of the new clusters.
	if len(b.counts) > 0 {
		if err := w.setRefcounts(b.counts); err != nil {
			return err
		}
	}
	w.opts.fail(InPlaceStepRefcount)
	// 3. references: L1 entries for new tables, L2 entries otherwise.
	gcs := make([]int64, 0, len(b.entries))
	for gc := range b.entries {
		gcs = append(gcs, gc)
	}
	sort.Slice(gcs, func(i, j int) bool { return gcs[i] < gcs[j] })
	for _, gc := range gcs {
		l1i := gc / w.l2n
		if _, isNew := b.newTables[l1i]; isNew {
			continue
		}
		l2off := int64(w.l1[l1i] & qcow2OffsetMask)
		w.l2[l2off][gc%w.l2n] = b.entries[gc]
		var e [8]byte
		binary.BigEndian.PutUint64(e[:], b.entries[gc])
		if _, err := w.f.WriteAt(e[:], l2off+(gc%w.l2n)*8); err != nil {
			return ioError(FormatQCOW2, w.path, "write L2 entry", err)
		}
	}
	for l1i, t := range b.newTables {
		w.l1[l1i] = uint64(t) | qcow2FlagCopied
		var e [8]byte
		binary.BigEndian.PutUint64(e[:], w.l1[l1i])
		if _, err := w.f.WriteAt(e[:], int64(w.h.l1Off)+l1i*8); err != nil {
			return ioError(FormatQCOW2, w.path, "write L1 entry", err)
		}
	}
	if err := w.sync(); err != nil {
		return err
	}
	w.opts.fail(InPlaceStepTable)
	// 4. drop the refcounts of replaced compressed clusters.
	if len(b.frees) == 0 {
		return nil
	}
	dec := map[int64]uint64{}
	for _, e := range b.frees {
		coff, cn := w.compressedHost(e)
		for c := coff >> w.cbits; c <= (coff+cn-1)>>w.cbits; c++ {
			if _, ok := dec[c]; !ok {
				dec[c] = w.refcount(c)
			}
			if dec[c] == 0 {
				return corruptf(FormatQCOW2, w.path, "compressed cluster at %#x has refcount 0", c<<w.cbits)
			}
			dec[c]--
		}
	}
	if err := w.setRefcounts(dec); err != nil {
		return err
	}
	w.opts.fail(InPlaceStepFree)
	return nil
}

func encodeTable(t []uint64) []byte {
	b := make([]byte, len(t)*8)
	for i, e := range t {
		binary.BigEndian.PutUint64(b[i*8:], e)
	}
	return b
}

// repairLeaks recomputes every cluster's references and lowers refcounts
// that are higher (leaks a crash between steps may leave). A refcount
// lower than the references is corruption this writer never causes: the
// image is refused.
func (w *qcow2InPlace) repairLeaks() error {
	refs := map[int64]uint64{}
	addRange := func(off, n int64) {
		for c := off >> w.cbits; c <= (off+n-1)>>w.cbits; c++ {
			refs[c]++
		}
	}
	addRange(0, w.cs)
	if len(w.l1) > 0 {
		addRange(int64(w.h.l1Off), int64(len(w.l1))*8)
	}
	addRange(int64(w.h.refcountTableOff), int64(w.h.refcountTableClusters)*w.cs)
	for _, off := range w.rt {
		if off != 0 {
			addRange(int64(off), w.cs)
		}
	}
	for _, l1e := range w.l1 {
		l2off := int64(l1e & qcow2OffsetMask)
		if l2off == 0 {
			continue
		}
		addRange(l2off, w.cs)
		for _, e := range w.l2[l2off] {
			if e&qcow2FlagCompressed != 0 {
				coff, cn := w.compressedHost(e)
				addRange(coff, cn)
			} else if host := int64(e & qcow2OffsetMask); host != 0 {
				addRange(host, w.cs)
			}
		}
	}
	fix := map[int64]uint64{}
	for ti, boff := range w.rt {
		if boff == 0 {
			continue
		}
		blk := w.rblock[int64(boff)]
		for bi := int64(0); bi < w.rpb; bi++ {
			ci := int64(ti)*w.rpb + bi
			have, want := getRef(blk, bi, w.rbits), refs[ci]
			switch {
			case have > want:
				fix[ci] = want
			case have < want:
				return corruptf(FormatQCOW2, w.path, "host cluster %#x has refcount %d but %d references; run qemu-img check -r all",
					ci<<w.cbits, have, want)
			}
		}
	}
	for ci, want := range refs {
		if w.refcount(ci) < want {
			return corruptf(FormatQCOW2, w.path, "host cluster %#x has refcount %d but %d references; run qemu-img check -r all",
				ci<<w.cbits, w.refcount(ci), want)
		}
	}
	if len(fix) == 0 {
		return nil
	}
	w.log.Info("repairing leaked qcow2 clusters left by an interrupted in-place write", "clusters", len(fix))
	return w.setRefcounts(fix)
}

var _ BlockWriter = (*qcow2InPlace)(nil)
var _ BlockWriter = (*rawInPlace)(nil)
