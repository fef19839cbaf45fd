package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/agent/track"
	"github.com/ferrydr/ferry/internal/fsutil"
)

// blockTracker is a whole block device's tracker: the dirty bitmap
// agent/bdtrack keeps in the kernel, pinned, at the disk's block size. It
// keeps the blocks of the cuts that no committed point holds yet and the
// point they count from, and Save writes both down
// (<state-dir>/bdtrack/<major>_<minor>), so that a restart that finds the
// tracker still pinned goes on from them without a full read.
type blockTracker struct {
	dev   string
	state string // the saved state's file
	log   *slog.Logger

	mu      sync.Mutex
	t       *bdtrack.Tracker
	pending bdtrack.Dirty // union of the cuts since base
	lost    string        // why pending cannot vouch for every write
	base    int64         // the point pending is relative to (0: none)
}

var _ writeTracker = (*blockTracker)(nil)

// blockStateDir holds the block trackers' saved state.
func blockStateDir(stateDir string) string { return filepath.Join(stateDir, "bdtrack") }

// startBlockTracker opens (or reopens, pinned) the tracker of dev at
// blockSize bytes a bit. A fresh tracker (first use, reboot, detached
// links) counts from the next commit; a reopened one goes on from the
// saved state, if any.
func startBlockTracker(dev string, blockSize int, stateDir, id string, log *slog.Logger) (*blockTracker, error) {
	t, err := bdtrack.Open(dev, blockSize, bdtrack.Options{})
	if errors.Is(err, bdtrack.ErrResized) || errors.Is(err, bdtrack.ErrMismatch) {
		// The device changed size, so what the pinned bitmap says no
		// longer maps onto it; or the pinned tracker is not one this
		// agent can use (another format after an upgrade, another block
		// size after a re-protect, a map removed from bpffs). The pin
		// directory is Ferry's own, for this device: left alone, it
		// would refuse tracking until someone removed it. Start over.
		lost := err
		log.Warn("write tracking: the pinned tracker cannot be used; it starts afresh", "disk", dev, "err", err)
		if err := bdtrack.RemovePinned(dev, bdtrack.Options{}); err != nil {
			return nil, err
		}
		if t, err = bdtrack.Open(dev, blockSize, bdtrack.Options{}); err == nil && t.Fresh {
			t.FreshReason = lost // rather than "no pinned tracker"
		}
	}
	if err != nil {
		return nil, err
	}
	b := &blockTracker{dev: dev, state: filepath.Join(blockStateDir(stateDir), id), log: log, t: t}
	b.pending = bdtrack.Dirty{BlockSize: blockSize}
	switch {
	case t.Fresh:
		log.Info("write tracking: the block device's tracker starts afresh; this cycle's view is made without it", "disk", dev, "fresh", true, "reason", t.FreshReason)
		os.Remove(b.state)
	default:
		st, err := loadBlockState(b.state, blockSize)
		switch {
		case err == nil:
			b.base, b.lost, b.pending = st.base, st.lost, st.pending
			log.Info("write tracking: the block device's tracker goes on from its pinned bitmap", "disk", dev, "fresh", false, "base", b.base)
		case errors.Is(err, fs.ErrNotExist):
			// The bitmap cannot say what the head point lacks: the cuts
			// drained into the last run's memory are gone with it. The
			// reason goes with the first cut, into the log of the
			// cycle that resyncs.
			b.lost = "the tracker is pinned but its state was not saved (the previous run died in a freeze, or could not save it)"
			log.Info("write tracking: the block device's tracker is pinned but no state was saved; it counts from the next commit", "disk", dev, "fresh", false)
		default:
			b.lost = "the tracker's saved state is unreadable: " + err.Error()
			log.Warn("write tracking: the block tracker's saved state is unreadable; it counts from the next commit", "disk", dev, "err", err)
		}
	}
	return b, nil
}

// Cut drains the kernel's bitmap into the pending set and returns it, as
// byte ranges of whole blocks.
func (b *blockTracker) Cut() (track.Cut, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	d, err := b.t.Cut()
	if errors.Is(err, bdtrack.ErrResized) {
		// What the bitmap says no longer maps onto the device: a new
		// tracker counts from this cut, and this cycle is not captured.
		b.t.Close()
		if rerr := bdtrack.RemovePinned(b.dev, bdtrack.Options{}); rerr != nil {
			return track.Cut{}, errors.Join(err, rerr)
		}
		t, oerr := bdtrack.Open(b.dev, b.pending.BlockSize, bdtrack.Options{})
		if oerr != nil {
			return track.Cut{}, errors.Join(err, oerr)
		}
		b.t = t
		b.pending = bdtrack.Dirty{BlockSize: b.pending.BlockSize}
		b.lost = "the device was resized: its tracker started afresh"
		return track.Cut{Lost: b.lost, Base: b.base}, nil
	}
	if err != nil {
		return track.Cut{}, err
	}
	b.pending.Merge(d)
	if d.Overflow && b.lost == "" {
		b.lost = "a request was too large for the dirty bitmap to mark"
	}
	return track.Cut{Ranges: dirtyRanges(b.pending), Fresh: dirtyRanges(d), Lost: b.lost, Base: b.base}, nil
}

// freezeHoldFile is a test hook, armed only by the environment variable
// FERRY_TEST_FREEZE_HOLD (a file's path, on a filesystem the agent does
// not freeze): when that file exists as the frozen cut ends
// (captureFrozen; not the pre-copy's cuts, which run unfrozen), the agent
// removes it and waits freezeHold. That is inside the freeze, after the
// kernel's bitmap was drained into this process's memory and before the
// state is saved: the worst place to die. A test that sees the file
// go knows the agent holds the filesystem frozen for that long, and kills
// it there (internal/e2e/bdfaults_linux_test.go); polling for the freeze
// alone would hit its few milliseconds by luck.
var freezeHoldFile = os.Getenv("FERRY_TEST_FREEZE_HOLD")

const freezeHold = 2 * time.Second

func holdInFreeze() {
	if freezeHoldFile != "" && os.Remove(freezeHoldFile) == nil {
		time.Sleep(freezeHold)
	}
}

// dirtyRanges is the byte ranges of d's dirty blocks, runs coalesced.
func dirtyRanges(d bdtrack.Dirty) []track.Range {
	var out []track.Range
	bs := int64(d.BlockSize)
	for _, blk := range d.Blocks() {
		off := int64(blk) * bs
		if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length == off {
			out[n-1].Length += bs
			continue
		}
		out = append(out, track.Range{Offset: off, Length: bs})
	}
	return out
}

func (b *blockTracker) Commit(point int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pending = bdtrack.Dirty{BlockSize: b.pending.BlockSize}
	b.lost = ""
	b.base = point
}

// Save writes the pending set and its base down; when that fails the
// saved state is removed, so that a restart counts afresh.
func (b *blockTracker) Save() error {
	b.mu.Lock()
	st := blockState{base: b.base, lost: b.lost, pending: b.pending}
	b.mu.Unlock()
	err := os.MkdirAll(filepath.Dir(b.state), 0o700)
	if err == nil {
		err = fsutil.WriteFileAtomic(b.state, st.encode(), 0o600)
	}
	if err != nil {
		if rerr := os.Remove(b.state); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// Close leaves the tracker pinned and marking, for the next start.
func (b *blockTracker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.t.Close()
}

// blockState is a block tracker's saved state.
//
// Encoding, little-endian: the 8 bytes "FRYBDST\x00", u32 version
// (blockStateVersion), u32 block size, i64 base point, u32 length and the
// bytes of the lost reason, u64 count of nonzero bitmap words, then that
// many pairs of u64 word index and u64 word.
type blockState struct {
	base    int64
	lost    string
	pending bdtrack.Dirty
}

const blockStateVersion = 1

var blockStateMagic = [8]byte{'F', 'R', 'Y', 'B', 'D', 'S', 'T', 0}

func (s blockState) encode() []byte {
	b := append([]byte{}, blockStateMagic[:]...)
	b = binary.LittleEndian.AppendUint32(b, blockStateVersion)
	b = binary.LittleEndian.AppendUint32(b, uint32(s.pending.BlockSize))
	b = binary.LittleEndian.AppendUint64(b, uint64(s.base))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s.lost)))
	b = append(b, s.lost...)
	n := 0
	for _, w := range s.pending.Words {
		if w != 0 {
			n++
		}
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(n))
	for i, w := range s.pending.Words {
		if w != 0 {
			b = binary.LittleEndian.AppendUint64(b, uint64(i))
			b = binary.LittleEndian.AppendUint64(b, w)
		}
	}
	return b
}

// maxSavedWords bounds a saved bitmap: bdtrack's largest (256 MiB).
const maxSavedWords = 256 << 20 / 8

func decodeBlockState(b []byte, blockSize int) (blockState, error) {
	var s blockState
	bad := func(what string) (blockState, error) {
		return blockState{}, fmt.Errorf("block tracker state: %s", what)
	}
	if len(b) < 28 || [8]byte(b[:8]) != blockStateMagic {
		return bad("not a block tracker state")
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != blockStateVersion {
		return bad(fmt.Sprintf("version %d, want %d", v, blockStateVersion))
	}
	if bs := int(binary.LittleEndian.Uint32(b[12:])); bs != blockSize {
		return bad(fmt.Sprintf("block size %d, want %d", bs, blockSize))
	}
	s.base = int64(binary.LittleEndian.Uint64(b[16:]))
	ln := uint64(binary.LittleEndian.Uint32(b[24:]))
	b = b[28:]
	if uint64(len(b)) < ln+8 {
		return bad("truncated")
	}
	s.lost, b = string(b[:ln]), b[ln:]
	n := binary.LittleEndian.Uint64(b)
	b = b[8:]
	if n > maxSavedWords || uint64(len(b)) != 16*n {
		return bad("bitmap length does not match")
	}
	s.pending = bdtrack.Dirty{BlockSize: blockSize}
	for i := uint64(0); i < n; i++ {
		idx := binary.LittleEndian.Uint64(b[16*i:])
		if idx >= maxSavedWords {
			return bad("word index out of range")
		}
		if idx >= uint64(len(s.pending.Words)) {
			s.pending.Words = append(s.pending.Words, make([]uint64, idx+1-uint64(len(s.pending.Words)))...)
		}
		s.pending.Words[idx] = binary.LittleEndian.Uint64(b[16*i+8:])
	}
	return s, nil
}

func loadBlockState(path string, blockSize int) (blockState, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return blockState{}, err
	}
	return decodeBlockState(b, blockSize)
}

// trackedBlockDevice is the trackedDisk of a whole block device (rdev its
// device number): the capture reads it with O_DIRECT (agent/disk), never
// through its page cache, which the mounted filesystem does not update.
func (a *Agent) trackedBlockDevice(path string, blockSize int, major, minor uint32) *trackedDisk {
	id := fmt.Sprintf("%d_%d", major, minor)
	return &trackedDisk{
		path:      path,
		id:        "dev " + id,
		rawDevice: true,
		start: func() (writeTracker, error) {
			return startBlockTracker(path, blockSize, a.cfg.StateDir, id, a.log)
		},
		open: func() (frozenReader, error) {
			src, err := disk.Open(path, disk.OpenOptions{Format: disk.FormatRaw})
			if err != nil {
				return nil, err
			}
			if why := disk.PageCacheReads(src); len(why) > 0 {
				src.Close()
				return nil, fmt.Errorf("%s cannot be read around its page cache: %s", path, why[0])
			}
			return src, nil
		},
	}
}
