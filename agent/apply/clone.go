package apply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/protocol/msg"
)

// copyChunk is the unit of the sparse copy: read, skipped when all zeros,
// written otherwise.
const copyChunk = 1 << 20

// The zero test compares chunks with zeroBlock.
var _ = [len(zeroBlock) - copyChunk]struct{}{}

// Clone copies the staged set of a machine into the test set to
// ("test-<job>") for a test failover, while staging goes on: it holds the
// machine's lock, so the copy is the staged set at its point, never a set
// half-way through a move. Each disk is a reflink (FICLONE) where the
// filesystem allows it, else a sparse copy that skips holes and zeros; the
// answer says which, and how many bytes a copy wrote. The test set appears
// whole or not at all (built under a temporary name, then renamed).
func (s *Site) Clone(ctx context.Context, dir, machine, to string) (msg.TargetCloneResponse, error) {
	if !IsTestSet(to) {
		return msg.TargetCloneResponse{}, invalidf("clone destination %q: want %q followed by a name", to, TestSetPrefix)
	}
	mdir, unlock, err := s.lockMachine(ctx, dir, machine, "clone to "+to)
	if err != nil {
		return msg.TargetCloneResponse{}, err
	}
	defer unlock()
	src, dst := filepath.Join(mdir, SetStaged), filepath.Join(mdir, to)
	st, err := ReadState(src)
	if err != nil {
		return msg.TargetCloneResponse{}, fmt.Errorf("clone of machine %s: %w", machine, err)
	}
	if st.MovingTo != 0 {
		return msg.TargetCloneResponse{}, fmt.Errorf("%w: clone of machine %s: %s; move it to a point first", ErrRefused, machine, describe(SetStaged, st))
	}
	if ok, err := exists(dst); err != nil || ok {
		if err == nil {
			err = fmt.Errorf("%w: %s (remove it first)", ErrExists, dst)
		}
		return msg.TargetCloneResponse{}, err
	}
	tmp, err := os.MkdirTemp(mdir, "."+to+".clone-")
	if err != nil {
		return msg.TargetCloneResponse{}, pathErr("mkdir", mdir, err)
	}
	defer os.RemoveAll(tmp) // nothing left after the rename
	resp := msg.TargetCloneResponse{Reflinked: true}
	for _, dk := range st.Disks {
		from, into := DiskPath(src, dk.Name), DiskPath(tmp, dk.Name)
		reflinked := false
		if resp.Reflinked {
			err := snapshot.Clone(from, into)
			switch {
			case err == nil:
				reflinked = true
			case errors.Is(err, snapshot.ErrNotSupported):
				// Every disk of a set is on one filesystem: copy them all.
				resp.Reflinked = false
			default:
				return msg.TargetCloneResponse{}, pathErr("reflink", from, err)
			}
		}
		if !reflinked {
			n, err := sparseCopy(ctx, from, into, dk.Size)
			if err != nil {
				return msg.TargetCloneResponse{}, err
			}
			resp.Bytes += n
		}
		if err := syncFile(into); err != nil {
			return msg.TargetCloneResponse{}, err
		}
	}
	if err := writeState(tmp, msg.DiskSetState{Point: st.Point, Disks: st.Disks}); err != nil {
		return msg.TargetCloneResponse{}, err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return msg.TargetCloneResponse{}, pathErr("rename", tmp, err)
	}
	if err := fsutil.SyncDir(mdir); err != nil {
		return msg.TargetCloneResponse{}, pathErr("fsync", mdir, err)
	}
	s.log.Info("staged set cloned", "machine", machine, "to", to, "point", st.Point, "reflinked", resp.Reflinked, "bytes_copied", resp.Bytes)
	return resp, nil
}

func syncFile(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return pathErr("open", p, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return pathErr("fsync", p, err)
}

// sparseCopy copies the first size bytes of src into a new file dst of
// that size, reading only the data extents (SEEK_DATA/SEEK_HOLE) and
// writing only the chunks that are not all zeros, so the copy is as sparse
// as the source or sparser. It returns the bytes written.
func sparseCopy(ctx context.Context, src, dst string, size int64) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, pathErr("open", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, pathErr("create", dst, err)
	}
	defer out.Close()
	if err := out.Truncate(size); err != nil {
		return 0, pathErr("truncate", dst, err)
	}
	exts, err := dataExtents(in, size)
	if err != nil {
		return 0, pathErr("seek data", src, err)
	}
	buf := make([]byte, copyChunk)
	var written int64
extents:
	for _, e := range exts {
		for off := e.off; off < e.off+e.n; {
			if err := ctx.Err(); err != nil {
				return written, err
			}
			p := buf[:min(int64(len(buf)), e.off+e.n-off)]
			k, err := in.ReadAt(p, off)
			if err != nil && !errors.Is(err, io.EOF) {
				return written, pathErr("read", src, err)
			}
			if p = p[:k]; !bytes.Equal(p, zeroBlock[:k]) {
				if _, err := out.WriteAt(p, off); err != nil {
					return written, pathErr("write", dst, err)
				}
				written += int64(k)
			}
			if err != nil {
				break extents // the source ends early: the rest reads as zeros
			}
			off += int64(k)
		}
	}
	return written, pathErr("close", dst, out.Close())
}
