package apply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"

	"github.com/ferrydr/ferry/internal/fsutil"
)

// Holding the home disks. While a machine's home disks are a replica (the
// home set, from Adopt until a machine is started on them — MarkWritten —
// or the set is removed), the agent keeps them open through the in-place
// writers: block devices opened O_EXCL, image files under QEMU's own lock
// bytes (agent/disk OpenInPlace). A QEMU, qemu-img or mount that would
// write them is refused while the agent runs. The sets held are listed in
// Config.HomeSets (docs/agent-formats.md, "Held home sets"), so a
// restarted agent takes them again (HoldHomes) — rolling back a move its
// death interrupted — before it serves anything.

// homeSetsVersion is the version of the HomeSets file.
const homeSetsVersion = 1

type homeSetsFile struct {
	Version int             `json:"version"`
	Sets    []homeSetsEntry `json:"sets"`
}

type homeSetsEntry struct {
	Dir     string `json:"dir"`
	Machine string `json:"machine"`
}

// readHomeSets reads the list; a missing file is an empty list.
func (s *Site) readHomeSets() ([]homeSetsEntry, error) {
	if s.cfg.HomeSets == "" {
		return nil, nil
	}
	b, err := os.ReadFile(s.cfg.HomeSets)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, pathErr("read", s.cfg.HomeSets, err)
	}
	var f homeSetsFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, pathErr("read", s.cfg.HomeSets, fmt.Errorf("%w: %v", ErrCorrupt, err))
	}
	if f.Version != homeSetsVersion {
		return nil, pathErr("read", s.cfg.HomeSets, fmt.Errorf("%w: version %d, this agent reads %d", ErrCorrupt, f.Version, homeSetsVersion))
	}
	return f.Sets, nil
}

// editHomeSets adds (add) or drops an entry of the list, durably.
func (s *Site) editHomeSets(e homeSetsEntry, add bool) error {
	if s.cfg.HomeSets == "" {
		return nil
	}
	s.hmu.Lock()
	defer s.hmu.Unlock()
	sets, err := s.readHomeSets()
	if err != nil {
		return err
	}
	i := slices.Index(sets, e)
	switch {
	case add && i >= 0, !add && i < 0:
		return nil
	case add:
		sets = append(sets, e)
	default:
		sets = slices.Delete(sets, i, i+1)
	}
	b, err := json.MarshalIndent(homeSetsFile{Version: homeSetsVersion, Sets: sets}, "", "  ")
	if err != nil {
		return fmt.Errorf("apply: encode home sets: %w", err)
	}
	return pathErr("write", s.cfg.HomeSets, fsutil.WriteFileAtomic(s.cfg.HomeSets, append(b, '\n'), 0o600))
}

// openSet opens a set for one operation, under its machine's lock: a held
// home set is used as it is (done does nothing); a listed home set the
// agent could not hold at its start is held from now on; others are
// opened and done closes them.
func (s *Site) openSet(setDir string) (*DiskSet, func(), error) {
	s.hmu.Lock()
	set := s.held[setDir]
	s.hmu.Unlock()
	if set != nil {
		return set, func() {}, nil
	}
	set, err := OpenDiskSet(setDir, s.setOptions())
	if err != nil {
		return nil, nil, err
	}
	if set.home() && s.listed(setDir) {
		s.hmu.Lock()
		if s.held == nil {
			s.held = map[string]*DiskSet{}
		}
		s.held[setDir] = set
		s.hmu.Unlock()
		s.log.Info("home disks held", "set", setDir)
		return set, func() {}, nil
	}
	return set, func() { set.Close() }, nil
}

// listed reports whether the HomeSets file lists the home set at setDir.
func (s *Site) listed(setDir string) bool {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	sets, err := s.readHomeSets()
	if err != nil {
		return false
	}
	for _, e := range sets {
		if d, err := SetDir(e.Dir, e.Machine, SetHome); err == nil && d == setDir {
			return true
		}
	}
	return false
}

// holdHome lists the home set of machine in dir and holds it open (under
// the machine's lock).
func (s *Site) holdHome(dir, machine, setDir string) error {
	if err := s.editHomeSets(homeSetsEntry{Dir: dir, Machine: machine}, true); err != nil {
		return err
	}
	s.hmu.Lock()
	_, ok := s.held[setDir]
	s.hmu.Unlock()
	if ok {
		return nil
	}
	set, err := OpenDiskSet(setDir, s.setOptions())
	if err != nil {
		return err
	}
	s.hmu.Lock()
	if s.held == nil {
		s.held = map[string]*DiskSet{}
	}
	s.held[setDir] = set
	s.hmu.Unlock()
	s.log.Info("home disks held", "machine", machine, "set", setDir)
	return nil
}

// release stops holding a home set and drops it from the list (under the
// machine's lock).
func (s *Site) release(dir, machine, setDir string) error {
	s.hmu.Lock()
	set := s.held[setDir]
	delete(s.held, setDir)
	s.hmu.Unlock()
	var err error
	if set != nil {
		err = set.Close()
		s.log.Info("home disks released", "machine", machine, "set", setDir)
	}
	return errors.Join(err, s.editHomeSets(homeSetsEntry{Dir: dir, Machine: machine}, false))
}

// HoldHomes takes the home sets the list names, as an agent starts: each
// is opened (a move its previous run did not finish is rolled back from
// the undo log there) and held. A set that no longer exists is dropped
// from the list; one that cannot be opened now (another process holds its
// disks) is reported and stays listed, for the next start or move.
func (s *Site) HoldHomes(ctx context.Context) error {
	sets, err := func() ([]homeSetsEntry, error) {
		s.hmu.Lock()
		defer s.hmu.Unlock()
		return s.readHomeSets()
	}()
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range sets {
		err := func() error {
			setDir, err := SetDir(e.Dir, e.Machine, SetHome)
			if err != nil {
				return err
			}
			_, unlock, err := s.lockMachine(ctx, e.Dir, e.Machine, "holding the home disks")
			if err != nil {
				return err
			}
			defer unlock()
			if _, err := ReadState(setDir); errors.Is(err, ErrNotFound) {
				s.log.Info("a listed home set is gone; dropped from the list", "machine", e.Machine, "set", setDir)
				return s.editHomeSets(e, false)
			}
			return s.holdHome(e.Dir, e.Machine, setDir)
		}()
		if err != nil {
			s.log.Error("the home disks cannot be held", "machine", e.Machine, "dir", e.Dir, "err", err)
			errs = append(errs, fmt.Errorf("home disks of %s: %w", e.Machine, err))
		}
	}
	return errors.Join(errs...)
}

// Close lets go of every held home set (the list stays, for the next
// start).
func (s *Site) Close() error {
	s.hmu.Lock()
	held := s.held
	s.held = nil
	s.hmu.Unlock()
	var errs []error
	for _, set := range held {
		errs = append(errs, set.Close())
	}
	return errors.Join(errs...)
}
