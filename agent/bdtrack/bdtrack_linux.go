package bdtrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// The meta map's one value: u64 little-endian fields.
const (
	metaMagic = 0x4b52544442595246 // "FRYBDTRK" read as little-endian bytes
	metaWords = 8                  // magic, version, dev, blockSize, size, words, created, maxWordsPerEvent
)

// Tracker is one device's pinned dirty bitmap.
type Tracker struct {
	// Fresh: no earlier tracking could be vouched for (see FreshReason);
	// the caller must resync the whole device before trusting cuts.
	Fresh       bool
	FreshReason error

	dev       string
	devT      uint32
	blockSize int
	size      uint64
	nbits     uint64
	words     uint64
	pinDir    string

	mu      sync.Mutex
	devFile *os.File
	bits    *ebpf.Map
	ctl     *ebpf.Map
	meta    *ebpf.Map
	links   []link.Link
	bitsMem []byte
	ctlMem  []byte
	closed  bool
}

// Open starts (or, if pinned, reopens) tracking of the whole-disk block
// device dev at one bit per blockSize bytes (a power of two, at least 512).
func Open(dev string, blockSize int, opts Options) (*Tracker, error) {
	t, err := open(dev, blockSize, opts)
	if err != nil {
		return nil, &Error{Op: "open", Dev: dev, Err: err}
	}
	return t, nil
}

func open(dev string, blockSize int, opts Options) (*Tracker, error) {
	if opts.BPFFS == "" {
		opts.BPFFS = "/sys/fs/bpf"
	}
	if opts.MaxBitmapBytes == 0 {
		opts.MaxBitmapBytes = DefaultMaxBitmapBytes
	}
	if opts.MaxBitmapBytes < 0 || opts.MaxBitmapBytes > maxBitmapBytesLimit {
		return nil, fmt.Errorf("bitmap bound %d out of range (at most %d)", opts.MaxBitmapBytes, maxBitmapBytesLimit)
	}
	if blockSize < 512 || blockSize > 1<<30 || blockSize&(blockSize-1) != 0 {
		return nil, fmt.Errorf("block size %d: want a power of two from 512", blockSize)
	}
	if err := probeBPF(); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, fmt.Errorf("%s is not a block device: %w", dev, ErrUnsupported)
	}
	major, minor := unix.Major(st.Rdev), unix.Minor(st.Rdev)
	if _, err := os.Stat(fmt.Sprintf("/sys/dev/block/%d:%d/partition", major, minor)); err == nil {
		// block_rq_complete reports the whole disk's dev_t and sectors.
		return nil, fmt.Errorf("%s is a partition; track the whole disk: %w", dev, ErrUnsupported)
	}
	t := &Tracker{
		dev:       dev,
		devT:      uint32(major)<<20 | uint32(minor),
		blockSize: blockSize,
		pinDir:    filepath.Join(opts.BPFFS, "ferry", fmt.Sprintf("%d_%d", major, minor)),
	}
	f, err := os.Open(dev)
	if err != nil {
		return nil, err
	}
	t.devFile = f
	ok := false
	defer func() {
		if !ok {
			t.closeLocked()
		}
	}()
	if t.size, err = deviceSize(f); err != nil {
		return nil, err
	}
	t.nbits = (t.size + uint64(blockSize) - 1) / uint64(blockSize)
	t.words = (t.nbits + 63) / 64
	if t.words == 0 {
		return nil, fmt.Errorf("%s is empty", dev)
	}
	if int64(t.words*8) > opts.MaxBitmapBytes || t.nbits >= 1<<31 {
		return nil, fmt.Errorf("%d bytes at %d-byte blocks need %d bitmap bytes, bound %d: %w",
			t.size, blockSize, t.words*8, opts.MaxBitmapBytes, ErrTooLarge)
	}
	if err := ensureBPFFS(opts.BPFFS); err != nil {
		return nil, err
	}
	if err := t.reuse(); err != nil {
		if !errors.Is(err, ErrNotPinned) && !errors.Is(err, ErrDetached) {
			return nil, err
		}
		t.Fresh, t.FreshReason = true, err
		keepMaps := errors.Is(err, ErrDetached)
		if err := t.create(keepMaps); err != nil {
			if !keepMaps {
				// No meta was pinned: drop the partial tracker now rather
				// than leave its links running until the next Open.
				t.closeLocked()
				os.RemoveAll(t.pinDir)
			}
			return nil, unsupported(err)
		}
	}
	if err := t.mapMemory(); err != nil {
		return nil, err
	}
	ok = true
	return t, nil
}

// probeBPF creates and drops a one-word map, so that a process without
// bpf() gets ErrUnsupported before any other error.
func probeBPF() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("bpf(): %w", unsupported(err))
	}
	return m.Close()
}

// unsupported marks the errors of a kernel or process without bpf().
func unsupported(err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) || errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return err
}

func deviceSize(f *os.File) (uint64, error) {
	var size uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); e != 0 {
		return 0, fmt.Errorf("BLKGETSIZE64: %w", e)
	}
	return size, nil
}

func ensureBPFFS(dir string) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("bpffs %s: %w", dir, err)
	}
	if fs.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, unsupported(err))
	}
	return nil
}

func (t *Tracker) pin(name string) string { return filepath.Join(t.pinDir, name) }

func (t *Tracker) metaValue(created int64) []byte {
	v := []uint64{metaMagic, FormatVersion, uint64(t.devT), uint64(t.blockSize), t.size, t.words, uint64(created), MaxWordsPerEvent}
	b := make([]byte, 8*metaWords)
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], x)
	}
	return b
}

// reuse opens the pinned tracker. ErrNotPinned: there is none (or only a
// partial one, from a crash during create). ErrDetached: the maps are kept
// in t but the links must be made again.
func (t *Tracker) reuse() error {
	meta, err := ebpf.LoadPinnedMap(t.pin("meta"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return ErrNotPinned
	}
	if err != nil {
		return unsupported(err)
	}
	t.meta = meta
	b := make([]byte, 8*metaWords)
	if err := meta.Lookup(uint32(0), &b); err != nil {
		return fmt.Errorf("read pinned meta: %w", err)
	}
	got := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	switch {
	case got(0) != metaMagic || got(1) != FormatVersion:
		return fmt.Errorf("%s: format %d, want %d: %w", t.pinDir, got(1), FormatVersion, ErrMismatch)
	case got(2) != uint64(t.devT):
		return fmt.Errorf("%s: dev_t %#x, want %#x: %w", t.pinDir, got(2), t.devT, ErrMismatch)
	case got(3) != uint64(t.blockSize):
		return fmt.Errorf("%s: block size %d, want %d: %w", t.pinDir, got(3), t.blockSize, ErrMismatch)
	case got(4) != t.size:
		return fmt.Errorf("%s: pinned size %d, device now %d: %w", t.pinDir, got(4), t.size, ErrResized)
	case got(5) != t.words || got(7) != MaxWordsPerEvent:
		return fmt.Errorf("%s: bitmap of %d words, want %d: %w", t.pinDir, got(5), t.words, ErrMismatch)
	}
	if t.bits, err = ebpf.LoadPinnedMap(t.pin("bits"), nil); err != nil {
		return fmt.Errorf("%s: bits: %v: %w", t.pinDir, err, ErrMismatch)
	}
	if t.ctl, err = ebpf.LoadPinnedMap(t.pin("ctl"), nil); err != nil {
		return fmt.Errorf("%s: ctl: %v: %w", t.pinDir, err, ErrMismatch)
	}
	if t.bits.MaxEntries() != uint32(2*t.words) || t.bits.ValueSize() != 8 || t.ctl.ValueSize() != ctlValueSize {
		return fmt.Errorf("%s: maps have the wrong shape: %w", t.pinDir, ErrMismatch)
	}
	bitsInfo, err := t.bits.Info()
	if err != nil {
		return err
	}
	bitsID, _ := bitsInfo.ID()
	for _, h := range hooks {
		l, err := link.LoadPinnedLink(t.pin("link_"+h.name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue // the hook may not exist on this kernel; checked below
		}
		if err != nil {
			return fmt.Errorf("%s: link %s: %v: %w", t.pinDir, h.name, err, ErrDetached)
		}
		t.links = append(t.links, l)
		if !linkUses(l, bitsID) {
			return fmt.Errorf("%s: link %s runs another program: %w", t.pinDir, h.name, ErrDetached)
		}
	}
	if len(t.links) != len(t.availableHooks()) {
		return fmt.Errorf("%s: %d of %d links pinned: %w", t.pinDir, len(t.links), len(t.availableHooks()), ErrDetached)
	}
	return nil
}

// linkUses reports whether the program behind l uses the map with id.
func linkUses(l link.Link, id ebpf.MapID) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return false
	}
	defer prog.Close()
	pi, err := prog.Info()
	if err != nil {
		return false
	}
	ids, _ := pi.MapIDs()
	return slices.Contains(ids, id)
}

// availableHooks are the hooks whose tracepoints this kernel has.
func (t *Tracker) availableHooks() []int {
	var out []int
	for i, h := range hooks {
		if _, err := readFormat(h.name); err == nil {
			out = append(out, i)
		}
	}
	return out
}

// create makes the maps (unless keepMaps, after ErrDetached) and the
// links, and pins them; meta is pinned last, so a pinned meta means a
// complete tracker.
func (t *Tracker) create(keepMaps bool) error {
	for _, l := range t.links {
		l.Close()
	}
	t.links = nil
	if !keepMaps {
		t.closeMaps()
		if err := os.RemoveAll(t.pinDir); err != nil {
			return err
		}
	} else {
		for _, h := range hooks {
			if err := os.Remove(t.pin("link_" + h.name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	if err := os.MkdirAll(t.pinDir, 0o700); err != nil {
		return err
	}
	var err error
	if !keepMaps {
		if t.bits, err = ebpf.NewMap(&ebpf.MapSpec{
			Name: "ferry_bits", Type: ebpf.Array, KeySize: 4, ValueSize: 8,
			MaxEntries: uint32(2 * t.words), Flags: unix.BPF_F_MMAPABLE,
		}); err != nil {
			return fmt.Errorf("create bitmap of %d words: %w", 2*t.words, err)
		}
		if t.ctl, err = ebpf.NewMap(&ebpf.MapSpec{
			Name: "ferry_ctl", Type: ebpf.Array, KeySize: 4, ValueSize: ctlValueSize,
			MaxEntries: 1, Flags: unix.BPF_F_MMAPABLE,
		}); err != nil {
			return err
		}
		if t.meta, err = ebpf.NewMap(&ebpf.MapSpec{
			Name: "ferry_meta", Type: ebpf.Array, KeySize: 4, ValueSize: 8 * metaWords, MaxEntries: 1,
		}); err != nil {
			return err
		}
		if err := t.meta.Update(uint32(0), t.metaValue(time.Now().UnixNano()), ebpf.UpdateAny); err != nil {
			return err
		}
		if err := t.bits.Pin(t.pin("bits")); err != nil {
			return err
		}
		if err := t.ctl.Pin(t.pin("ctl")); err != nil {
			return err
		}
	}
	var completions int
	for _, i := range t.availableHooks() {
		h := hooks[i]
		f, err := readFormat(h.name)
		if err != nil {
			return err
		}
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:    "ferry_" + h.name[len("block_"):],
			Type:    ebpf.TracePoint,
			License: "GPL",
			Instructions: program(f, progParams{
				dev: t.devT, shift: int32(bits.TrailingZeros(uint(t.blockSize)) - 9),
				nbits: int32(t.nbits), words: int32(t.words),
				bits: t.bits, ctl: t.ctl, statOff: h.stat,
			}),
		})
		if err != nil {
			return fmt.Errorf("load program for %s: %w", h.name, err)
		}
		l, err := link.Tracepoint("block", h.name, prog, nil)
		prog.Close() // the link holds it
		if err != nil {
			return fmt.Errorf("attach %s: %w", h.name, err)
		}
		t.links = append(t.links, l)
		if err := l.Pin(t.pin("link_" + h.name)); err != nil {
			return fmt.Errorf("pin link %s: %w", h.name, err)
		}
		if h.complete {
			completions++
		}
	}
	if len(t.links) == 0 || !t.linkedQueue() || completions == 0 {
		return fmt.Errorf("need block_bio_queue and a completion tracepoint: %w", ErrUnsupported)
	}
	if !keepMaps {
		return t.meta.Pin(t.pin("meta"))
	}
	return nil
}

func (t *Tracker) linkedQueue() bool {
	_, err := os.Stat(t.pin("link_block_bio_queue"))
	return err == nil
}

func (t *Tracker) mapMemory() error {
	var err error
	if t.bitsMem, err = unix.Mmap(t.bits.FD(), 0, pageRound(int(2*t.words*8)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return fmt.Errorf("mmap bitmap: %w", err)
	}
	if t.ctlMem, err = unix.Mmap(t.ctl.FD(), 0, pageRound(ctlValueSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return fmt.Errorf("mmap ctl: %w", err)
	}
	return nil
}

func pageRound(n int) int {
	p := os.Getpagesize()
	return (n + p - 1) / p * p
}

func word(mem []byte, i uint64) *uint64 { return (*uint64)(unsafe.Pointer(&mem[8*i])) }

// Cut makes the other bitmap active and returns what the now inactive one
// held, clearing it (see the package doc for why no write is lost).
func (t *Tracker) Cut() (Dirty, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return Dirty{}, &Error{Op: "cut", Dev: t.dev, Err: ErrClosed}
	}
	size, err := deviceSize(t.devFile)
	if err != nil {
		return Dirty{}, &Error{Op: "cut", Dev: t.dev, Err: err}
	}
	if size != t.size {
		return Dirty{}, &Error{Op: "cut", Dev: t.dev, Err: fmt.Errorf("size %d, tracked %d: %w", size, t.size, ErrResized)}
	}
	active := atomic.LoadUint64(word(t.ctlMem, ctlActive/8)) & 1
	atomic.StoreUint64(word(t.ctlMem, ctlActive/8), active^1)
	d := Dirty{BlockSize: t.blockSize, NumBlocks: t.nbits, Words: make([]uint64, t.words)}
	base := active * t.words
	for i := range t.words {
		p := word(t.bitsMem, base+i)
		if atomic.LoadUint64(p) != 0 {
			d.Words[i] = atomic.SwapUint64(p, 0)
		}
	}
	if n := atomic.LoadUint64(word(t.ctlMem, ctlOverflows/8)); n != atomic.LoadUint64(word(t.ctlMem, ctlOverflowsCut/8)) {
		d.Overflow = true
		atomic.StoreUint64(word(t.ctlMem, ctlOverflowsCut/8), n)
	}
	return d, nil
}

// Stats reads the program's counters.
func (t *Tracker) Stats() (Stats, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return Stats{}, ErrClosed
	}
	get := func(off int) uint64 { return atomic.LoadUint64(word(t.ctlMem, uint64(off/8))) }
	return Stats{Queued: get(ctlQueued), BioCompleted: get(ctlBioCompleted), RqCompleted: get(ctlRqCompleted), Overflows: get(ctlOverflows)}, nil
}

// Close releases this process's handles; the tracker stays pinned and
// keeps marking, for the next Open.
func (t *Tracker) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closeLocked()
	return nil
}

// RemovePinned unpins the tracker of dev without opening it, for a
// caller that got ErrResized or ErrMismatch from Open.
func RemovePinned(dev string, opts Options) error {
	dir, err := pinDirOf(dev, opts)
	if err != nil {
		return &Error{Op: "remove", Dev: dev, Err: err}
	}
	if err := os.RemoveAll(dir); err != nil {
		return &Error{Op: "remove", Dev: dev, Err: err}
	}
	return nil
}

// Remove unpins the tracker and stops tracking.
func (t *Tracker) Remove() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closeLocked()
	if err := os.RemoveAll(t.pinDir); err != nil {
		return &Error{Op: "remove", Dev: t.dev, Err: err}
	}
	return nil
}

func (t *Tracker) closeLocked() {
	if t.closed {
		return
	}
	t.closed = true
	for _, l := range t.links {
		l.Close()
	}
	t.links = nil
	if t.bitsMem != nil {
		unix.Munmap(t.bitsMem)
		t.bitsMem = nil
	}
	if t.ctlMem != nil {
		unix.Munmap(t.ctlMem)
		t.ctlMem = nil
	}
	t.closeMaps()
	if t.devFile != nil {
		t.devFile.Close()
	}
}

func (t *Tracker) closeMaps() {
	for _, m := range []**ebpf.Map{&t.bits, &t.ctl, &t.meta} {
		if *m != nil {
			(*m).Close()
			*m = nil
		}
	}
}
