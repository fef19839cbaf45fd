package apply

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/protocol/msg"
)

// CloneHome copies the home disk set of a machine (ref, set SetHome: the
// machine's own disks where they are) into the test set to ("test-<job>")
// under toDir, for a failback test (ferry failback M --test): the home
// agent starts the copy through the home driver while the machine runs at
// its recovery site and the home disks go on being kept current. It holds
// the machine's lock of the home set, so the copy is the home disks at
// their point, never half-way through a move; a home set between points or
// written since its last move is refused (ErrRefused). Each disk is a
// reflink where the filesystem allows it (the test directory on the home
// disks' filesystem), else a sparse copy; a clone keeps its disk's
// extension (a qcow2 or VHDX home disk is copied as the same container;
// a block device becomes a raw file). The test set appears whole or not
// at all, and the answer names its files. The home disks are only read.
func (s *Site) CloneHome(ctx context.Context, ref msg.TargetRef, toDir, to string) (msg.TargetCloneResponse, error) {
	if ref.Set != SetHome {
		return msg.TargetCloneResponse{}, invalidf("clone of the home disks: set %q is not %q", ref.Set, SetHome)
	}
	if !IsTestSet(to) {
		return msg.TargetCloneResponse{}, invalidf("clone destination %q: want %q followed by a name", to, TestSetPrefix)
	}
	dst, err := SetDir(toDir, ref.Machine, to)
	if err != nil {
		return msg.TargetCloneResponse{}, err
	}
	src, err := SetDir(ref.Dir, ref.Machine, ref.Set)
	if err != nil {
		return msg.TargetCloneResponse{}, err
	}
	_, unlock, err := s.lockMachine(ctx, ref.Dir, ref.Machine, "clone of the home disks to "+to)
	if err != nil {
		return msg.TargetCloneResponse{}, err
	}
	defer unlock()
	st, err := ReadState(src)
	if err != nil {
		return msg.TargetCloneResponse{}, fmt.Errorf("clone of the home disks of %s: %w", ref.Machine, err)
	}
	if st.MovingTo != 0 || st.Written || st.Point == 0 {
		return msg.TargetCloneResponse{}, fmt.Errorf("%w: clone of the home disks of %s: %s; the home disks must hold a point (move them to one first)", ErrRefused, ref.Machine, describe(SetHome, st))
	}
	if len(st.Paths) != len(st.Disks) {
		return msg.TargetCloneResponse{}, fmt.Errorf("%w: the home set of %s names %d files for %d disks", ErrInvalid, ref.Machine, len(st.Paths), len(st.Disks))
	}
	if ok, err := exists(dst); err != nil || ok {
		if err == nil {
			err = fmt.Errorf("%w: %s (remove it first)", ErrExists, dst)
		}
		return msg.TargetCloneResponse{}, err
	}
	// The test set's machine directory in toDir has its own lock: a
	// remove of the test set (cleanup) takes it.
	mdir := filepath.Dir(dst)
	if filepath.Clean(toDir) != filepath.Clean(ref.Dir) {
		_, unlockTest, err := s.lockMachine(ctx, toDir, ref.Machine, "clone of the home disks to "+to)
		if err != nil {
			return msg.TargetCloneResponse{}, err
		}
		defer unlockTest()
	}
	if err := mkdirDurable(mdir); err != nil {
		return msg.TargetCloneResponse{}, err
	}
	tmp, err := os.MkdirTemp(mdir, "."+to+".clone-")
	if err != nil {
		return msg.TargetCloneResponse{}, pathErr("mkdir", mdir, err)
	}
	defer os.RemoveAll(tmp) // nothing left after the rename
	resp := msg.TargetCloneResponse{Reflinked: true}
	var names []string
	for i, dk := range st.Disks {
		from := st.Paths[i]
		fi, err := os.Stat(from)
		if err != nil {
			return msg.TargetCloneResponse{}, pathErr("stat", from, err)
		}
		name, size := dk.Name+diskExt, dk.Size
		if fi.Mode().IsRegular() {
			if ext := filepath.Ext(from); ext != "" {
				name = dk.Name + ext
			}
			size = fi.Size() // a container (qcow2, VHDX) is copied whole
		}
		into := filepath.Join(tmp, name)
		reflinked := false
		if resp.Reflinked && fi.Mode().IsRegular() {
			err := snapshot.Clone(from, into)
			switch {
			case err == nil:
				reflinked = true
			case errors.Is(err, snapshot.ErrNotSupported):
				resp.Reflinked = false
			default:
				return msg.TargetCloneResponse{}, pathErr("reflink", from, err)
			}
		} else {
			resp.Reflinked = false
		}
		if !reflinked {
			n, err := sparseCopy(ctx, from, into, size)
			if err != nil {
				return msg.TargetCloneResponse{}, err
			}
			resp.Bytes += n
		}
		if err := syncFile(into); err != nil {
			return msg.TargetCloneResponse{}, err
		}
		names = append(names, name)
	}
	for _, n := range names {
		resp.Paths = append(resp.Paths, filepath.Join(dst, n))
	}
	// The state names the clone's own files (Paths, inside the set): a
	// move writes them in place (their container kept), Status reports
	// them and Remove deletes them with the set. The clone holds the home
	// set's point, so a move from it writes only what differs.
	if err := writeState(tmp, msg.DiskSetState{Point: st.Point, Disks: st.Disks, Paths: resp.Paths, Formats: st.Formats}); err != nil {
		return msg.TargetCloneResponse{}, err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return msg.TargetCloneResponse{}, pathErr("rename", tmp, err)
	}
	if err := fsutil.SyncDir(mdir); err != nil {
		return msg.TargetCloneResponse{}, pathErr("fsync", mdir, err)
	}
	s.log.Info("home disks cloned", "machine", ref.Machine, "to", dst, "point", st.Point, "reflinked", resp.Reflinked, "bytes_copied", resp.Bytes)
	return resp, nil
}
