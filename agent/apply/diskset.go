package apply

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/msg"
)

// errPunchUnsupported: the filesystem cannot punch holes; write zeros.
var errPunchUnsupported = errors.New("punch hole not supported")

// zeroBlock is written where a hole cannot be punched. Read-only.
var zeroBlock [data.MaxBlockSize]byte

// extent is a byte range of a file.
type extent struct{ off, n int64 }

// SetOptions tunes a DiskSet.
type SetOptions struct {
	// Counter, when set, also receives the bytes this set's write path
	// applies (a Site's total across sets).
	Counter *atomic.Int64
	// WritebackBytes starts the kernel's writeback of a disk file each time
	// this many bytes have been written to it, so the fsync that ends a
	// move has little left to do; 0 leaves it all to that fsync.
	WritebackBytes int64
	// Logger receives what the set does on its own (an undo log rolled
	// back); nil discards.
	Logger *slog.Logger
}

// DiskSet is one disk set directory, DIR/M/<set>/: a state.json and a
// sparse raw file per disk. WriteBlock and ZeroBlock may run concurrently
// with each other; the other methods are exclusive.
//
// A move goes BeginMove (MovingTo recorded durably) → blocks written in
// place → Finish (files truncated and fsynced, then state.json says
// Point=to). A crash anywhere in between leaves MovingTo set, so the set is
// never taken for a point it does not hold. A home set (SetHome) also keeps an
// undo log through the move (undo.go): Protect before each batch, and a
// move that fails or is cut is rolled back to the point it started from.
type DiskSet struct {
	dir  string
	opts SetOptions

	mu     sync.RWMutex // read: block writes; write: everything else
	state  msg.DiskSetState
	files  []*diskFile // by index in state.Disks
	closed bool

	applied atomic.Int64
	noPunch atomic.Bool // the filesystem refused a punch once: write zeros

	// undo is the undo log of the move in progress of a home set
	// (undo.go); umu guards it, as block writes run concurrently.
	umu  sync.Mutex
	undo *undoLog
}

type diskFile struct {
	f *os.File // nil for a home disk, written through w
	// w writes a home disk (SetHome) in place as the guest sees it, with
	// its container's own crash safety (raw, qcow2, VHDX; agent/disk
	// OpenInPlace) and a lock QEMU honours while the set is open. It is
	// not safe for concurrent use: wmu serialises its calls.
	w     disk.BlockWriter
	wmu   sync.Mutex
	path  string
	disk  msg.TargetDisk
	dirty atomic.Int64 // bytes written since the last writeback start
}

// OpenDiskSet opens the existing set at setDir. ErrNotFound when it has no
// state.json.
func OpenDiskSet(setDir string, opts SetOptions) (*DiskSet, error) {
	st, err := ReadState(setDir)
	if err != nil {
		return nil, err
	}
	d := &DiskSet{dir: setDir, opts: opts, state: st}
	// A set between points may lack files of disks its move added (a crash
	// after the state was written); any other set must have them all.
	if err := d.openFiles(st.MovingTo != 0); err != nil {
		d.closeFiles()
		return nil, err
	}
	if d.home() {
		// A move the agent did not live to finish or roll back.
		if err := d.recoverUndo(); err != nil {
			d.closeFiles()
			return nil, err
		}
	}
	return d, nil
}

// CreateDiskSet makes the set at setDir holding point 0 (all zeros) with
// sparse files of the disks' sizes. The directory appears whole or not at
// all: it is built under a temporary name and renamed into place. The
// machine directory and its parents are created if needed. ErrExists when
// the set exists.
func CreateDiskSet(setDir string, disks []msg.TargetDisk, opts SetOptions) (*DiskSet, error) {
	if err := ValidateDisks(disks); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(setDir); err == nil {
		return nil, fmt.Errorf("%w: %s", ErrExists, setDir)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, pathErr("stat", setDir, err)
	}
	parent := filepath.Dir(setDir)
	if err := mkdirDurable(parent); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(setDir)+".create-")
	if err != nil {
		return nil, pathErr("mkdir", parent, err)
	}
	defer os.RemoveAll(tmp) // nothing left after the rename
	st := msg.DiskSetState{Point: 0, Disks: cleanDisks(disks)}
	for _, dk := range st.Disks {
		p := DiskPath(tmp, dk.Name)
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, pathErr("create", p, err)
		}
		err = f.Truncate(dk.Size)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, pathErr("create", p, err)
		}
	}
	if err := writeState(tmp, st); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, setDir); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
			return nil, fmt.Errorf("%w: %s", ErrExists, setDir)
		}
		return nil, pathErr("rename", setDir, err)
	}
	if err := fsutil.SyncDir(parent); err != nil {
		return nil, pathErr("fsync", parent, err)
	}
	return OpenDiskSet(setDir, opts)
}

// mkdirDurable creates dir and its missing parents, fsyncing the parent of
// each directory it creates so the entries survive a power cut.
func mkdirDurable(dir string) error {
	var missing []string
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return pathErr("stat", p, err)
		}
		missing = append(missing, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		p := missing[i]
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return pathErr("mkdir", p, err)
		}
		if err := fsutil.SyncDir(filepath.Dir(p)); err != nil {
			return pathErr("fsync", filepath.Dir(p), err)
		}
	}
	return nil
}

// openFiles opens a file per disk of d.state. With create, missing files
// are created; files shorter than their disk are extended (a hole).
func (d *DiskSet) openFiles(create bool) error {
	old := make(map[string]*diskFile, len(d.files))
	for _, df := range d.files {
		old[df.disk.Name] = df
	}
	files := make([]*diskFile, 0, len(d.state.Disks))
	created := false
	fail := func(err error) error {
		for _, df := range files {
			if old[df.disk.Name] != df {
				df.close()
			}
		}
		return err
	}
	for _, dk := range d.state.Disks {
		df := old[dk.Name]
		if df == nil && len(d.state.Paths) != 0 {
			p := diskPathOf(d.dir, d.state, len(files))
			var format disk.Format
			if i := len(files); i < len(d.state.Formats) {
				format = disk.Format(d.state.Formats[i])
			}
			w, err := disk.OpenInPlace(p, disk.InPlaceOptions{Format: format})
			if err != nil {
				return fail(pathErr("open", p, fmt.Errorf("%w: %w", ErrRefused, err)))
			}
			df = &diskFile{w: w, path: p, disk: dk}
			files = append(files, df)
			if w.Size() != dk.Size {
				// A home disk is never resized by a move.
				return fail(pathErr("open", p, fmt.Errorf("%w: the home disk has %d bytes, the point %d", ErrRefused, w.Size(), dk.Size)))
			}
			continue
		}
		if df != nil && df.w != nil {
			df.disk = dk
			files = append(files, df)
			continue
		}
		if df == nil {
			p := diskPathOf(d.dir, d.state, len(files))
			flags := os.O_RDWR
			if create && len(d.state.Paths) == 0 {
				flags |= os.O_CREATE
			}
			f, err := os.OpenFile(p, flags, 0o600)
			if errors.Is(err, fs.ErrNotExist) {
				return fail(pathErr("open", p, fmt.Errorf("%w: the state lists disk %s but its file is missing", ErrCorrupt, dk.Name)))
			}
			if err != nil {
				return fail(pathErr("open", p, err))
			}
			df = &diskFile{f: f, path: p}
			created = created || create
		}
		df.disk = dk
		files = append(files, df)
		fi, err := df.f.Stat()
		if err != nil {
			return fail(pathErr("stat", df.path, err))
		}
		if fi.Size() < dk.Size {
			if err := df.f.Truncate(dk.Size); err != nil {
				return fail(pathErr("extend", df.path, err))
			}
		}
	}
	if created {
		if err := fsutil.SyncDir(d.dir); err != nil {
			return fail(pathErr("fsync", d.dir, err))
		}
	}
	keep := make(map[*diskFile]bool, len(files))
	for _, df := range files {
		keep[df] = true
	}
	for _, df := range d.files {
		if !keep[df] {
			df.close()
		}
	}
	d.files = files
	return nil
}

// close closes a disk's file or in-place writer.
func (df *diskFile) close() error {
	if df.w != nil {
		return df.w.Close()
	}
	return df.f.Close()
}

func (d *DiskSet) closeFiles() error {
	var errs []error
	for _, df := range d.files {
		if err := df.close(); err != nil {
			errs = append(errs, pathErr("close", df.path, err))
		}
	}
	d.files = nil
	return errors.Join(errs...)
}

// Dir is the set's directory.
func (d *DiskSet) Dir() string { return d.dir }

// State is the set's state, with each disk's Path filled in.
func (d *DiskSet) State() msg.DiskSetState {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return withPaths(d.dir, d.state)
}

func withPaths(setDir string, st msg.DiskSetState) msg.DiskSetState {
	st.Disks = cleanDisks(st.Disks)
	for i := range st.Disks {
		st.Disks[i].Path = diskPathOf(setDir, st, i)
	}
	return st
}

// diskPathOf is the file of disk i of a set: its own file for the home
// set (Paths), else the raw file in the set directory.
func diskPathOf(setDir string, st msg.DiskSetState, i int) string {
	if len(st.Paths) > i {
		return st.Paths[i]
	}
	return DiskPath(setDir, st.Disks[i].Name)
}

// BytesApplied counts the bytes WriteBlock and ZeroBlock applied to this
// set since it was opened.
func (d *DiskSet) BytesApplied() int64 { return d.applied.Load() }

// BeginMove records durably that the set is moving to point to with the
// given disks (which may differ in number and size from the current ones),
// then opens, creates and extends the disk files to match. Blocks may be
// written only after it. Beginning again a move that was interrupted is
// allowed.
func (d *DiskSet) BeginMove(to int64, disks []msg.TargetDisk) error {
	if to <= 0 {
		return invalidf("move to point %d: want > 0", to)
	}
	if err := ValidateDisks(disks); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if len(d.state.Paths) != 0 && !sameShape(d.state.Disks, disks) {
		return fmt.Errorf("%w: %s: the home disks are updated in place and keep their number and sizes", ErrRefused, d.dir)
	}
	if d.home() {
		// The way back exists before the state says the set is moving.
		if d.undo != nil {
			d.undo.f.Close()
			d.undo = nil
		}
		if err := d.beginUndo(to); err != nil {
			return err
		}
	}
	next := d.state
	next.MovingTo = to
	next.Disks = cleanDisks(disks)
	if err := writeState(d.dir, next); err != nil {
		return err
	}
	d.state = next
	// Format copies (Convert) hold the old point: gone before any block
	// of the new one lands.
	if err := removeConversions(d.dir); err != nil {
		return err
	}
	return d.openFiles(true)
}

// Reset makes every disk of a moving set all zeros (a hole), for a move
// that then writes every non-zero block of its point. Only between
// BeginMove and Finish: the state says the set is moving, so a crash
// leaves a set known to hold no point.
//
// A home set is not zeroed here: its disks are written only where they
// differ from the point. Finish zeroes the blocks the move did not write
// or zero (those already zeros are left alone), and the blocks it did
// name are skipped when they hold that content already; the undo log
// keeps whatever is overwritten, as for any move.
func (d *DiskSet) Reset() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.state.MovingTo == 0 {
		return invalidf("reset of a set that is not moving")
	}
	for _, df := range d.files {
		if df.w != nil {
			d.umu.Lock()
			u := d.undo
			if u != nil {
				u.reset = true
				if u.named == nil {
					u.named = map[undoKey]bool{}
				}
			}
			d.umu.Unlock()
			if u == nil {
				return fmt.Errorf("%w: %s: a reset outside a move (call BeginMove)", ErrRefused, d.dir)
			}
			continue
		}
		if err := df.f.Truncate(0); err != nil {
			return pathErr("truncate", df.path, err)
		}
		if err := df.f.Truncate(df.disk.Size); err != nil {
			return pathErr("truncate", df.path, err)
		}
	}
	return nil
}

// locate checks a block address for a write of plen plain bytes and returns
// its file, offset and the bytes that fall inside the disk.
func (d *DiskSet) locate(disk int, block uint64, plen int) (*diskFile, int64, int, error) {
	if d.closed {
		return nil, 0, 0, ErrClosed
	}
	if d.state.MovingTo == 0 {
		return nil, 0, 0, fmt.Errorf("%w: %s: a block written outside a move (call BeginMove)", ErrRefused, d.dir)
	}
	if disk < 0 || disk >= len(d.files) {
		return nil, 0, 0, invalidf("disk index %d: the set has %d disks", disk, len(d.files))
	}
	df := d.files[disk]
	bs := uint64(df.disk.BlockSize)
	last := uint64(df.disk.Size-1) / bs
	if block > last {
		return nil, 0, 0, invalidf("disk %s: block %d past the last block %d", df.disk.Name, block, last)
	}
	off := int64(block * bs)
	n := int(min(int64(bs), df.disk.Size-off))
	// A whole block, or exactly the part of the last block inside the disk.
	if plen != int(bs) && plen != n {
		return nil, 0, 0, invalidf("disk %s: block %d of %d bytes, want %d", df.disk.Name, block, plen, bs)
	}
	return df, off, n, nil
}

// WriteBlock writes a block's plain bytes in place (the part past the
// end of the disk, in its last block, is dropped).
func (d *DiskSet) WriteBlock(disk int, block uint64, p []byte) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	df, off, n, err := d.locate(disk, block, len(p))
	if err != nil {
		return err
	}
	if df.w != nil {
		skip, err := d.guard(df, undoKey{disk, block}, off, p, n)
		if err != nil || skip {
			return err
		}
		df.wmu.Lock()
		_, err = df.w.WriteAt(p[:n], off)
		df.wmu.Unlock()
		if err != nil {
			return pathErr("write", df.path, err)
		}
		d.count(df, n)
		return nil
	}
	if _, err := df.f.WriteAt(p[:n], off); err != nil {
		return pathErr("write", df.path, err)
	}
	d.count(df, n)
	return nil
}

// ZeroBlock makes a block read as zeros: a punched hole where the
// filesystem can, zeros written where it cannot. The old content is never
// read.
func (d *DiskSet) ZeroBlock(disk int, block uint64) error { return d.zero(disk, block, -1) }

// zero is ZeroBlock for a block announced as plen bytes (-1: a whole block).
func (d *DiskSet) zero(disk int, block uint64, plen int) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if plen < 0 {
		plen = d.blockSizeOf(disk)
	}
	df, off, n, err := d.locate(disk, block, plen)
	if err != nil {
		return err
	}
	if df.w != nil {
		skip, err := d.guard(df, undoKey{disk, block}, off, nil, n)
		if err != nil || skip {
			return err
		}
		df.wmu.Lock()
		err = df.w.Zero(off, int64(n))
		df.wmu.Unlock()
		if err != nil {
			return pathErr("zero", df.path, err)
		}
		d.count(df, n)
		return nil
	}
	if !d.noPunch.Load() {
		err := punchHole(df.f, off, int64(n))
		if err == nil {
			d.count(df, n)
			return nil
		}
		if !errors.Is(err, errPunchUnsupported) {
			return pathErr("punch", df.path, err)
		}
		d.noPunch.Store(true)
	}
	if _, err := df.f.WriteAt(zeroBlock[:n], off); err != nil {
		return pathErr("write", df.path, err)
	}
	d.count(df, n)
	return nil
}

func (d *DiskSet) blockSizeOf(disk int) int {
	if disk < 0 || disk >= len(d.files) {
		return 0
	}
	return d.files[disk].disk.BlockSize
}

func (d *DiskSet) count(df *diskFile, n int) {
	d.applied.Add(int64(n))
	if d.opts.Counter != nil {
		d.opts.Counter.Add(int64(n))
	}
	if wb := d.opts.WritebackBytes; wb > 0 && df.f != nil && df.dirty.Add(int64(n)) >= wb {
		df.dirty.Store(0)
		// Only a hint: the fsync in Finish is what makes the data durable,
		// and reports any error.
		_ = startWriteback(df.f)
	}
}

// Finish ends the move to point to: every file truncated to its disk's
// size and fsynced, then state.json says Point=to (the durable order: data
// fsync → state rename → directory fsync). Files of disks the move dropped
// are deleted last. Finish clears Written: the move's blocks are the
// caller's word for the whole content at point to.
func (d *DiskSet) Finish(to int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.state.MovingTo != to || to == 0 {
		return fmt.Errorf("%w: finish a move to %d: %s", ErrRefused, to, describe(filepath.Base(d.dir), d.state))
	}
	if u := d.undo; u != nil && u.reset {
		// The reset of a home set (Reset): what the move did not name.
		for i, df := range d.files {
			if df.w != nil {
				if err := d.resetHome(i, df, u.named); err != nil {
					return err
				}
			}
		}
		u.reset = false
	}
	for _, df := range d.files {
		if df.w != nil {
			if err := df.w.Sync(); err != nil {
				return pathErr("fsync", df.path, err)
			}
			continue
		}
		if err := df.f.Truncate(df.disk.Size); err != nil {
			return pathErr("truncate", df.path, err)
		}
		if err := df.f.Sync(); err != nil {
			return pathErr("fsync", df.path, err)
		}
		df.dirty.Store(0)
	}
	next := msg.DiskSetState{Point: to, Disks: d.state.Disks, Paths: d.state.Paths, Formats: d.state.Formats}
	if err := writeState(d.dir, next); err != nil {
		return err
	}
	d.state = next
	// The new point is durable: the way back is not needed any more.
	if err := d.endUndo(); err != nil {
		return err
	}
	return d.removeStrays()
}

// removeStrays deletes raw files of disks the state no longer lists.
func (d *DiskSet) removeStrays() error {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return pathErr("list", d.dir, err)
	}
	keep := make(map[string]bool, len(d.state.Disks))
	for _, dk := range d.state.Disks {
		keep[dk.Name+diskExt] = true
	}
	removed := false
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, diskExt) || keep[name] || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(d.dir, name)
		if err := os.Remove(p); err != nil {
			return pathErr("remove", p, err)
		}
		removed = true
	}
	if removed {
		return pathErr("fsync", d.dir, fsutil.SyncDir(d.dir))
	}
	return nil
}

// SetWritten records durably that a machine runs on the set, so its disks
// may differ from Point: a move then needs the caller's force.
func (d *DiskSet) SetWritten() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.state.Written {
		return nil
	}
	next := d.state
	next.Written = true
	if err := writeState(d.dir, next); err != nil {
		return err
	}
	d.state = next
	return nil
}

// Close closes the disk files. Data not yet finished stays where it is;
// the state still says the set is moving.
func (d *DiskSet) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if d.undo != nil {
		d.undo.f.Close() // the log stays: the next open rolls the move back
		d.undo = nil
	}
	return d.closeFiles()
}

// sameShape reports whether two disk lists name the same disks of the same
// sizes and block sizes, in order.
func sameShape(a, b []msg.TargetDisk) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Size != b[i].Size || a[i].BlockSize != b[i].BlockSize {
			return false
		}
	}
	return true
}
