package blockmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"
	"sync"

	"github.com/zeebo/xxh3"
)

// Hash is a block's map entry. The all-zero value means "the block is all
// zeros": a fresh disk at the controller is all zeros, so a new map is a
// sparse file of zeros and costs nothing to create.
type Hash = xxh3.Uint128

// ZeroHash is the entry of an all-zero block.
var ZeroHash Hash

// Unknown marks a block whose content at the controller is not known to
// equal anything the agent has (after a resync found a difference): it
// never equals a block's Sum, so the block is sent.
var Unknown = Hash{Hi: ^uint64(0), Lo: ^uint64(0)}

// Sum returns a block's map entry: ZeroHash for an all-zero block, else its
// xxh3-128 (which is never all-zero in practice: 2^-128).
func Sum(block []byte) Hash {
	if IsZero(block) {
		return ZeroHash
	}
	return xxh3.Hash128(block)
}

// IsZero reports whether b is all zeros, eight bytes at a time.
func IsZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Map file format (docs/replication.md "Block map"): a 4 KiB header, then
// one 16-byte entry per block. Version 2 added the disk's byte size (the
// size the entries describe); a version 1 map is read as having size
// count × block size.
const (
	magic         = "FERRYMAP"
	version       = 2
	headerSize    = 4096
	entrySize     = 16
	bootIDLen     = 64
	headerBytesV1 = 8 + 2 + 4 + 8 + 8 + 8 + 1 + bootIDLen // without the CRC
	headerBytes   = headerBytesV1 + 8                     // + size i64
)

// State is what the map says of itself: which controller state it matches.
type State struct {
	// HeadPoint is the newest point the map is known to equal (0: none yet).
	HeadPoint int64
	// Pending is the pending point whose acknowledged blocks the map holds
	// beyond HeadPoint (0: none).
	Pending int64
	// InCycle is set (and synced) before the first acknowledgement of a
	// cycle is recorded and cleared when the cycle's point is committed and
	// the entries are synced. Entries written while it is set may be lost by
	// a power cut (they are not fsynced one by one).
	InCycle bool
	// BootID identifies the host boot during which InCycle was set. After a
	// process crash on the same boot the page cache kept every entry, so
	// the map is still exact; after a reboot it is not.
	BootID string
}

// ErrCorrupt is returned for a map file that cannot be trusted.
var ErrCorrupt = errors.New("block map corrupt")

// Map is one disk's block map.
type Map struct {
	mu        sync.Mutex
	f         *os.File
	path      string
	blockSize int
	entries   []Hash
	state     State
	// size is the disk size of this cycle's view; fileCount and fileSize
	// are what the file's header says (the size the stored entries were
	// made for). Open adapts the entries in memory only; BeginCycle makes
	// the new size durable (see Open).
	size      int64
	fileCount int64
	fileSize  int64
	// recheck lists the blocks Open marked Unknown because of a size
	// change, ascending: they must be compared whatever the change
	// detection says.
	recheck []int64
}

// Open opens the map at path for a disk of size bytes with blockSize blocks,
// creating it (all zeros: what a new disk at the controller holds) if
// missing. It reports whether the map can be trusted: false when the file
// was damaged or a cycle was in flight across a reboot — the caller must
// then resync against the controller's hashes. A map of another block size
// is replaced.
//
// A size other than the one the file's entries were made for is a size
// change, handled in memory (the file changes at BeginCycle, when the
// controller is about to see the new size):
//   - shrink: the entries beyond the new size are forgotten (the controller
//     records the cut-off blocks as zeros when it commits the point);
//   - grow: the new blocks are zero when the map is committed (the
//     controller's newest point was no larger, and storage never returns
//     data beyond a size a disk shrank to), but Unknown when a cycle was
//     begun and not committed (the controller may have kept the larger
//     size and its data);
//   - the block that held the old end and the one that holds the new end
//     are Unknown: bytes beyond the end inside a block read as zeros at
//     the source but may not at the controller.
//
// Recheck lists the blocks made Unknown this way.
func Open(path string, blockSize int, size int64, bootID string) (m *Map, trusted bool, err error) {
	if blockSize <= 0 {
		return nil, false, fmt.Errorf("blockmap: block size %d", blockSize)
	}
	n := blocksFor(size, blockSize)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("blockmap: %w", err)
	}
	m = &Map{f: f, path: path, blockSize: blockSize, size: size}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, false, err
	}
	fresh := func() error {
		m.entries = make([]Hash, n)
		m.fileCount, m.fileSize = n, size
		if err := f.Truncate(0); err != nil {
			return err
		}
		if err := m.writeHeaderLocked(); err != nil {
			return err
		}
		return m.f.Truncate(headerSize + n*entrySize)
	}
	if st.Size() == 0 {
		if err := fresh(); err != nil {
			f.Close()
			return nil, false, err
		}
		return m, true, nil
	}
	hdrBS, state, count, fsize, herr := readHeader(f)
	if herr != nil || hdrBS != blockSize {
		// A damaged map or one for another block size: start from zero, but
		// untrusted, so the owner resyncs against the controller.
		m.state = State{}
		if err := fresh(); err != nil {
			f.Close()
			return nil, false, err
		}
		return m, false, nil
	}
	m.state = state
	m.fileCount, m.fileSize = count, fsize
	m.entries = make([]Hash, n)
	if err := m.readEntries(min(count, n)); err != nil {
		f.Close()
		return nil, false, err
	}
	trusted = !(state.InCycle && (state.BootID == "" || state.BootID != bootID))
	if fsize != size {
		committed := !state.InCycle && state.Pending == 0
		if !committed {
			for b := count; b < n; b++ {
				m.entries[b] = Unknown
				m.recheck = append(m.recheck, b)
			}
		}
		for _, b := range []int64{blocksFor(fsize, blockSize) - 1, n - 1} {
			if b >= 0 && b < n && b < count {
				m.entries[b] = Unknown
				m.recheck = append(m.recheck, b)
			}
		}
		slices.Sort(m.recheck)
		m.recheck = slices.Compact(m.recheck)
	}
	return m, trusted, nil
}

func blocksFor(size int64, blockSize int) int64 {
	return (size + int64(blockSize) - 1) / int64(blockSize)
}

func readHeader(f *os.File) (blockSize int, st State, count, size int64, err error) {
	var h [headerBytes + 4]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return 0, st, 0, 0, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	if string(h[:8]) != magic {
		return 0, st, 0, 0, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	v := binary.LittleEndian.Uint16(h[8:])
	n := headerBytes
	switch v {
	case 1:
		n = headerBytesV1
	case version:
	default:
		return 0, st, 0, 0, fmt.Errorf("%w: version %d, want 1 or %d", ErrCorrupt, v, version)
	}
	if crc32.ChecksumIEEE(h[:n]) != binary.LittleEndian.Uint32(h[n:]) {
		return 0, st, 0, 0, fmt.Errorf("%w: header checksum", ErrCorrupt)
	}
	blockSize = int(binary.LittleEndian.Uint32(h[10:]))
	count = int64(binary.LittleEndian.Uint64(h[14:]))
	st.HeadPoint = int64(binary.LittleEndian.Uint64(h[22:]))
	st.Pending = int64(binary.LittleEndian.Uint64(h[30:]))
	st.InCycle = h[38] == 1
	st.BootID = string(trimZero(h[39 : 39+bootIDLen]))
	if count < 0 || count > 1<<34 {
		return 0, st, 0, 0, fmt.Errorf("%w: block count %d", ErrCorrupt, count)
	}
	size = count * int64(blockSize)
	if v == version {
		size = int64(binary.LittleEndian.Uint64(h[headerBytesV1:]))
		if size < 0 || blockSize <= 0 || blocksFor(size, blockSize) != count {
			return 0, st, 0, 0, fmt.Errorf("%w: size %d does not match %d blocks", ErrCorrupt, size, count)
		}
	}
	return blockSize, st, count, size, nil
}

func trimZero(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}

func (m *Map) readEntries(count int64) error {
	buf := make([]byte, 1<<20)
	off := int64(headerSize)
	for i := int64(0); i < count; {
		k := min(int64(len(buf)/entrySize), count-i)
		b := buf[:k*entrySize]
		if _, err := m.f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("blockmap: read %s: %w", m.path, err)
		}
		for j := int64(0); j < k; j++ {
			e := b[j*entrySize:]
			m.entries[i+j] = Hash{Hi: binary.LittleEndian.Uint64(e), Lo: binary.LittleEndian.Uint64(e[8:])}
		}
		i += k
		off += k * entrySize
	}
	return nil
}

func (m *Map) writeHeaderLocked() error {
	var h [headerBytes + 4]byte
	copy(h[:], magic)
	binary.LittleEndian.PutUint16(h[8:], version)
	binary.LittleEndian.PutUint32(h[10:], uint32(m.blockSize))
	binary.LittleEndian.PutUint64(h[14:], uint64(m.fileCount))
	binary.LittleEndian.PutUint64(h[22:], uint64(m.state.HeadPoint))
	binary.LittleEndian.PutUint64(h[30:], uint64(m.state.Pending))
	if m.state.InCycle {
		h[38] = 1
	}
	copy(h[39:39+bootIDLen], m.state.BootID)
	binary.LittleEndian.PutUint64(h[headerBytesV1:], uint64(m.fileSize))
	binary.LittleEndian.PutUint32(h[headerBytes:], crc32.ChecksumIEEE(h[:headerBytes]))
	if _, err := m.f.WriteAt(h[:], 0); err != nil {
		return fmt.Errorf("blockmap: write header: %w", err)
	}
	return m.f.Sync()
}

// persistSizeLocked makes the in-memory size durable: the file holds
// exactly the entries of the current size (Unknown ones written out); the
// caller then writes the header.
func (m *Map) persistSizeLocked() error {
	n := int64(len(m.entries))
	if n == m.fileCount && m.size == m.fileSize && len(m.recheck) == 0 {
		return nil
	}
	keep := min(n, m.fileCount)
	if err := m.f.Truncate(headerSize + keep*entrySize); err != nil {
		return fmt.Errorf("blockmap: truncate %s: %w", m.path, err)
	}
	if err := m.f.Truncate(headerSize + n*entrySize); err != nil {
		return fmt.Errorf("blockmap: extend %s: %w", m.path, err)
	}
	var buf [entrySize]byte
	write := func(b int64) error {
		binary.LittleEndian.PutUint64(buf[:], m.entries[b].Hi)
		binary.LittleEndian.PutUint64(buf[8:], m.entries[b].Lo)
		if _, err := m.f.WriteAt(buf[:], headerSize+b*entrySize); err != nil {
			return fmt.Errorf("blockmap: write %s: %w", m.path, err)
		}
		return nil
	}
	for b := keep; b < n; b++ {
		if m.entries[b] != ZeroHash {
			if err := write(b); err != nil {
				return err
			}
		}
	}
	for _, b := range m.recheck {
		if b < keep {
			if err := write(b); err != nil {
				return err
			}
		}
	}
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("blockmap: sync %s: %w", m.path, err)
	}
	m.fileCount, m.fileSize = n, m.size
	return nil
}

// Recheck returns the blocks Open marked Unknown because the disk's size
// changed (ascending): the caller compares them whatever its change
// detection says.
func (m *Map) Recheck() []int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.recheck)
}

// Len is the number of blocks.
func (m *Map) Len() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.entries))
}

// BlockSize is the map's block size.
func (m *Map) BlockSize() int { return m.blockSize }

// Get returns a block's entry.
func (m *Map) Get(block int64) Hash {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.entries[block]
}

// Entry is one acknowledged block.
type Entry struct {
	Block int64
	Hash  Hash
}

// Set records acknowledged blocks. The entries reach the page cache at
// once (pwrite) so a killed process loses nothing; they are fsynced by
// Commit.
func (m *Map) Set(es ...Entry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var buf [entrySize]byte
	for _, e := range es {
		if e.Block < 0 || e.Block >= int64(len(m.entries)) {
			return fmt.Errorf("blockmap: block %d out of range (%d blocks)", e.Block, len(m.entries))
		}
		m.entries[e.Block] = e.Hash
		binary.LittleEndian.PutUint64(buf[:], e.Hash.Hi)
		binary.LittleEndian.PutUint64(buf[8:], e.Hash.Lo)
		if _, err := m.f.WriteAt(buf[:], headerSize+e.Block*entrySize); err != nil {
			return fmt.Errorf("blockmap: write %s: %w", m.path, err)
		}
	}
	return nil
}

// State returns the map's state.
func (m *Map) State() State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// BeginCycle marks (durably) that acknowledgements for pending point
// pending are about to be recorded.
//
// A size change seen by Open becomes durable here, before the header says
// a cycle is in flight: from now on the controller may record the new size.
func (m *Map) BeginCycle(pending int64, bootID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.persistSizeLocked(); err != nil {
		return err
	}
	m.state.Pending = pending
	m.state.InCycle = true
	m.state.BootID = bootID
	return m.writeHeaderLocked()
}

// Commit syncs the entries and records that the map equals point head.
func (m *Map) Commit(head int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.persistSizeLocked(); err != nil {
		return err
	}
	if err := m.f.Sync(); err != nil {
		return fmt.Errorf("blockmap: sync %s: %w", m.path, err)
	}
	m.state = State{HeadPoint: head}
	m.recheck = nil
	return m.writeHeaderLocked()
}

// Reset forgets everything (after a resync decision): every entry becomes
// zero and the state empty. The caller then fills it from a hash resync.
func (m *Map) Reset() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.entries)
	m.state = State{}
	if err := m.f.Truncate(headerSize); err != nil {
		return err
	}
	if err := m.f.Truncate(headerSize + int64(len(m.entries))*entrySize); err != nil {
		return err
	}
	m.recheck = nil // a resync compares every block
	m.fileCount, m.fileSize = int64(len(m.entries)), m.size
	return m.writeHeaderLocked()
}

// Close closes the file (entries already written stay).
func (m *Map) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.f.Close()
}
