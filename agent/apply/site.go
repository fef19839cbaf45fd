package apply

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/agent/repokey"
	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/protocol/msg"
)

// Config tunes a Site.
type Config struct {
	// Logger receives the site's logs; nil discards.
	Logger *slog.Logger
	// Workers verify and write the blocks of a batch in parallel; 0 means
	// GOMAXPROCS.
	Workers int
	// WritebackBytes starts the kernel's writeback of a disk file every so
	// many bytes written to it during a move (SetOptions.WritebackBytes);
	// 0 leaves everything to the fsync at the end.
	WritebackBytes int64
	// RepositoryKey returns the encrypted repository's private key this
	// agent holds, for restore streams of sealed chunks; nil (or
	// repokey.ErrNoKey) when it holds none.
	RepositoryKey func() (*repokey.Key, error)
	// HomeSets is the file listing the home disk sets this agent holds
	// (hold.go), so a restarted agent takes them again; "" keeps the list
	// in memory only.
	HomeSets string
	// Pause, when set, is called at the named points (PauseHomeMove) for
	// crash tests; nil in production.
	Pause func(point string)
}

// PauseHomeMove is where Config.Pause is called: the first batch of a move
// into the home disks is written, its undo log durable, the move not
// finished.
const PauseHomeMove = "home-move"

// DefaultConfig: workers per CPU, writeback started every 32 MiB.
func DefaultConfig() Config {
	return Config{WritebackBytes: 32 << 20}
}

// Validate reports the first unusable setting.
func (c Config) Validate() error {
	if c.Workers < 0 {
		return fmt.Errorf("apply: config: workers %d is negative", c.Workers)
	}
	if c.WritebackBytes < 0 {
		return fmt.Errorf("apply: config: writeback bytes %d is negative", c.WritebackBytes)
	}
	return nil
}

// Site is the recovery-site side of one agent: the disk sets of the
// machines under any target directory it is asked about, one operation per
// machine at a time, and the count of bytes its write path applied.
type Site struct {
	cfg     Config
	log     *slog.Logger
	locks   machineLocks
	written atomic.Int64

	hmu  sync.Mutex
	held map[string]*DiskSet // home sets held open, by set directory
}

// NewSite returns a Site.
func NewSite(cfg Config) (*Site, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Site{cfg: cfg, log: log}, nil
}

// BytesWritten counts the bytes the site's write path applied to disk sets
// (written blocks and zeroed ranges) since NewSite.
func (s *Site) BytesWritten() int64 { return s.written.Load() }

func (s *Site) setOptions() SetOptions {
	return SetOptions{Counter: &s.written, WritebackBytes: s.cfg.WritebackBytes, Logger: s.log}
}

// Status reads the state of every disk set of a machine. A machine without
// a directory has no sets: the map is empty, not an error.
func (s *Site) Status(ctx context.Context, dir, machine string) (map[string]msg.DiskSetState, error) {
	mdir, err := MachineDir(dir, machine)
	if err != nil {
		return nil, err
	}
	out := map[string]msg.DiskSetState{}
	entries, err := os.ReadDir(mdir)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, pathErr("list", mdir, err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !e.IsDir() || !ValidSetName(e.Name()) {
			continue // our temporary entries start with '.'
		}
		setDir := filepath.Join(mdir, e.Name())
		st, err := ReadState(setDir)
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile, or not a set
		}
		if err != nil {
			return nil, err
		}
		out[e.Name()] = withPaths(setDir, st)
	}
	return out, nil
}

// lockMachine checks dir and machine, takes the machine's lock and clears
// what interrupted operations left behind.
func (s *Site) lockMachine(ctx context.Context, dir, machine, what string) (mdir string, unlock func(), err error) {
	mdir, err = MachineDir(dir, machine)
	if err != nil {
		return "", nil, err
	}
	unlock, err = s.locks.lock(ctx, mdir, what)
	if err != nil {
		return "", nil, err
	}
	s.sweep(mdir)
	return mdir, unlock, nil
}

// sweep deletes the temporary entries (names starting with '.') that an
// operation interrupted by a crash left in a machine directory. It runs
// under the machine's lock, so no live operation owns them.
func (s *Site) sweep(mdir string) {
	entries, err := os.ReadDir(mdir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(mdir, e.Name())
		if err := os.RemoveAll(p); err != nil {
			s.log.Warn("cannot remove what an interrupted operation left", "path", p, "err", err)
			continue
		}
		s.log.Info("removed what an interrupted operation left", "path", p)
	}
}

// Promote renames the staged set to live: the failed-over machine's disks.
// It is idempotent: with live there and staged gone it has nothing to do.
func (s *Site) Promote(ctx context.Context, dir, machine string) error {
	return s.rename(ctx, dir, machine, SetStaged, SetLive, "promote")
}

// Demote renames the live set back to staged (a rolled-back failover). It
// is idempotent like Promote. The set keeps its Written mark, so moving it
// again needs force.
func (s *Site) Demote(ctx context.Context, dir, machine string) error {
	return s.rename(ctx, dir, machine, SetLive, SetStaged, "demote")
}

func (s *Site) rename(ctx context.Context, dir, machine, from, to, what string) error {
	mdir, unlock, err := s.lockMachine(ctx, dir, machine, what)
	if err != nil {
		return err
	}
	defer unlock()
	src, dst := filepath.Join(mdir, from), filepath.Join(mdir, to)
	srcOK, err := isSet(src)
	if err != nil {
		return err
	}
	dstOK, err := exists(dst)
	if err != nil {
		return err
	}
	switch {
	case !srcOK && dstOK:
		return nil // done before: the reply was lost, or a retry
	case !srcOK:
		return fmt.Errorf("%w: %s of machine %s: no %s set in %s", ErrNotFound, what, machine, from, mdir)
	case dstOK:
		return fmt.Errorf("%w: %s of machine %s: both %s and %s exist in %s", ErrExists, what, machine, from, to, mdir)
	}
	if err := os.Rename(src, dst); err != nil {
		return pathErr("rename", src, err)
	}
	if err := fsutil.SyncDir(mdir); err != nil {
		return pathErr("fsync", mdir, err)
	}
	s.log.Info("disk set renamed", "op", what, "machine", machine, "from", from, "to", to)
	return nil
}

// Remove deletes a disk set. The directory is first renamed to a
// temporary name (so a crash never leaves a half-deleted set that looks
// whole), then deleted. A set that does not exist is already removed.
func (s *Site) Remove(ctx context.Context, ref msg.TargetRef) error {
	setDir, err := SetDir(ref.Dir, ref.Machine, ref.Set)
	if err != nil {
		return err
	}
	mdir, unlock, err := s.lockMachine(ctx, ref.Dir, ref.Machine, "remove of "+ref.Set)
	if err != nil {
		return err
	}
	defer unlock()
	if ref.Set == SetHome {
		// Not a replica any more: the home disks are let go.
		if err := s.release(ref.Dir, ref.Machine, setDir); err != nil {
			return err
		}
	}
	ok, err := exists(setDir)
	if err != nil || !ok {
		return err
	}
	tomb := filepath.Join(mdir, fmt.Sprintf(".%s.removing-%016x", ref.Set, rand.Uint64()))
	if err := os.Rename(setDir, tomb); err != nil {
		return pathErr("rename", setDir, err)
	}
	if err := fsutil.SyncDir(mdir); err != nil {
		return pathErr("fsync", mdir, err)
	}
	if err := os.RemoveAll(tomb); err != nil {
		// The set is gone; the next operation's sweep retries.
		s.log.Warn("removed set left files behind", "path", tomb, "err", err)
	}
	s.log.Info("disk set removed", "machine", ref.Machine, "set", ref.Set)
	return nil
}

// MarkWritten records that a machine runs on a set (its driver started
// it), so the disks may differ from the set's point.
func (s *Site) MarkWritten(ctx context.Context, ref msg.TargetRef) error {
	setDir, err := SetDir(ref.Dir, ref.Machine, ref.Set)
	if err != nil {
		return err
	}
	_, unlock, err := s.lockMachine(ctx, ref.Dir, ref.Machine, "mark written of "+ref.Set)
	if err != nil {
		return err
	}
	defer unlock()
	set, done, err := s.openSet(setDir)
	if err != nil {
		return err
	}
	defer done()
	if err := set.SetWritten(); err != nil {
		return err
	}
	if set.home() {
		// A machine is started on its home disks: they are its own
		// again, not a replica the agent holds.
		return s.release(ref.Dir, ref.Machine, setDir)
	}
	return nil
}

func exists(p string) (bool, error) {
	_, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, pathErr("stat", p, err)
	}
	return true, nil
}

// isSet reports whether setDir holds a readable state file.
func isSet(setDir string) (bool, error) {
	_, err := ReadState(setDir)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Adopt makes a machine's home disks, where they are, its home disk set
// (SetHome): only state.json is written, in the set directory; the disks
// stay the machine's own files and later moves update them in place.
// Disks agent/disk OpenInPlace can write (raw images and block devices,
// qcow2, VHDX) of exactly their disk's size are taken; others (VMDK, VHD,
// another size, held by another process) are refused with the reason
// (ErrRefused) and nothing is written. Adopting the same paths again is a
// no-op; other paths for an existing home set are refused.
func (s *Site) Adopt(ctx context.Context, ref msg.TargetRef, disks []msg.TargetDisk, paths []string) (msg.DiskSetState, error) {
	if ref.Set != SetHome {
		return msg.DiskSetState{}, invalidf("adopt: set %q: only the %q set keeps disks where they are", ref.Set, SetHome)
	}
	setDir, err := SetDir(ref.Dir, ref.Machine, ref.Set)
	if err != nil {
		return msg.DiskSetState{}, err
	}
	st := msg.DiskSetState{Disks: cleanDisks(disks), Paths: paths, Written: true, Formats: homeFormats(disks)}
	if err := checkState(st); err != nil {
		return msg.DiskSetState{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if len(paths) != len(disks) {
		return msg.DiskSetState{}, invalidf("adopt: %d paths for %d disks", len(paths), len(disks))
	}
	_, unlock, err := s.lockMachine(ctx, ref.Dir, ref.Machine, "adopt of the home disks")
	if err != nil {
		return msg.DiskSetState{}, err
	}
	defer unlock()
	if old, err := ReadState(setDir); err == nil {
		if slices.Equal(old.Paths, paths) {
			if err := s.holdHome(ref.Dir, ref.Machine, setDir); err != nil {
				return msg.DiskSetState{}, err
			}
			return withPaths(setDir, old), nil
		}
		return msg.DiskSetState{}, fmt.Errorf("%w: %s already keeps other home disks (%v)", ErrExists, setDir, old.Paths)
	} else if !errors.Is(err, ErrNotFound) {
		return msg.DiskSetState{}, err
	}
	for i, p := range paths {
		if err := checkHomeFormat(p, disks[i], selfPaths()); err != nil {
			return msg.DiskSetState{}, err
		}
		if err := checkHomeDisk(p, disks[i]); err != nil {
			return msg.DiskSetState{}, err
		}
	}
	if err := mkdirDurable(setDir); err != nil {
		return msg.DiskSetState{}, err
	}
	if err := writeState(setDir, st); err != nil {
		return msg.DiskSetState{}, err
	}
	if err := s.holdHome(ref.Dir, ref.Machine, setDir); err != nil {
		return msg.DiskSetState{}, err
	}
	s.log.Info("home disks adopted", "machine", ref.Machine, "paths", paths)
	return withPaths(setDir, st), nil
}

// checkHomeDisk refuses a home disk that cannot be written in place here:
// agent/disk OpenInPlace takes raw images and block devices, qcow2 and
// VHDX (with their own crash safety) and refuses the rest with the reason
// and the alternative; the disk must have its point's size and no other
// process may hold it.
func checkHomeDisk(p string, d msg.TargetDisk) error {
	w, err := disk.OpenInPlace(p, disk.InPlaceOptions{Format: disk.Format(d.Format)})
	if err != nil {
		return pathErr("adopt", p, fmt.Errorf("%w: disk %s: %w", ErrRefused, d.Name, err))
	}
	size := w.Size()
	if err := w.Close(); err != nil {
		return pathErr("adopt", p, err)
	}
	if size != d.Size {
		return pathErr("adopt", p, fmt.Errorf("%w: disk %s has %d bytes where the point has %d", ErrRefused, d.Name, size, d.Size))
	}
	return nil
}
