package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/agent/track"
	"github.com/ferrydr/ferry/internal/fsutil"
	"github.com/ferrydr/ferry/protocol/msg"
)

// DefaultMaxCapture bounds the bytes one frozen capture may hold in memory.
const DefaultMaxCapture = 256 << 20

// cutTimeout bounds the wait for a tracker to read its events up to a cut.
const cutTimeout = 500 * time.Millisecond

// trackers are the write trackers of the disks the agent tracks
// (Config.TrackWrites), by machine.
type trackers struct {
	mu      sync.Mutex
	files   map[string][]*trackedDisk // machine → its disks, in order
	refused map[string]string         // machine → why it is not tracked (logged once)
}

// writeTracker is what a tracked cycle needs of one disk's tracker: a
// raw image file's (fileTracker) or a block device's (blockTracker).
type writeTracker interface {
	// Cut closes the current window, with the disk's filesystem frozen,
	// and returns every range written since the point Cut.Base (0: none
	// yet). It does no I/O but the tracker's own.
	Cut() (track.Cut, error)
	// Commit records that point holds everything up to the last cut (0:
	// count again from the next cut).
	Commit(point int64)
	// Save writes down where the tracker stands, so that a restart goes
	// on from there; it runs after the thaw, before the freezing note
	// goes (thawLeftFrozen).
	Save() error
	// Close stops this process's use of the tracker.
	Close() error
}

// trackedDisk is one disk's tracker and what it follows (id: a file's
// inode, a device's number): a file replaced under the same name is
// another file, tracked afresh.
type trackedDisk struct {
	path string
	id   string
	// start starts the tracker; open opens the disk for the capture,
	// which reads around every page cache.
	start func() (writeTracker, error)
	open  func() (frozenReader, error)
	t     writeTracker
	// rawDevice: a block device, which something other than its frozen
	// filesystems could write (writtenWhileFrozen).
	rawDevice bool
}

// frozenReader reads a disk during a freeze.
type frozenReader interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// capturedView is what a tracked cycle's view holds besides the view.
type capturedView struct {
	disks []*captured // per disk of the view (nil: the view was not captured)
	base  int64       // the point the captures are relative to
}

// takeView makes a cycle's view. With write tracking on and the machine's
// disks raw files on one filesystem that may be frozen, the filesystem is
// frozen, every tracker cut, and — when the trackers can vouch for every
// change since the head point — the changed blocks are read into memory
// before the thaw: that is the view. Otherwise the cut still marks the
// instant from which the trackers count, and the taker makes the view
// (a reflink clone taken after the thaw holds everything before the cut).
func (a *Agent) takeView(ctx context.Context, req snapshot.Request, cfg msg.MachineConfig) (*snapshot.View, capturedView, error) {
	// An app-consistent view with nothing to quiesce is a crash-consistent
	// one (the point's note says so).
	var notes []string
	if req.App && req.PreSnapshot == "" && len(req.Freeze) == 0 {
		notes = append(notes, "app-consistent requested but no --pre-snapshot or --freeze is configured")
		req.App = false
	}
	take := func() (*snapshot.View, error) {
		v, err := a.taker.Take(ctx, req)
		if err == nil {
			v.Notes = slices.Concat(notes, v.Notes)
		}
		return v, err
	}
	if !a.cfg.TrackWrites || req.App {
		// The trackers' pending pages are relative to a point this view
		// does not follow from: they count again from their next cut.
		a.tracking.forget(cfg.Name)
		v, err := take()
		return v, capturedView{}, err
	}
	disks, mounts, pause, why := a.trackableWith(cfg, req.Driver)
	if why == "" {
		var err error
		if disks, err = a.tracking.ensure(cfg.Name, disks); err != nil {
			why = err.Error()
		}
	}
	if why != "" {
		a.tracking.refuse(cfg.Name, why, a.log)
		v, err := take()
		return v, capturedView{}, err
	}
	var pauser snapshot.Driver
	method := snapshot.MethodTrackedFreeze
	if pause {
		pauser, method = req.Driver, snapshot.MethodPauseTracked
	}
	fz := a.freezeAndCapture(cfg, disks, mounts, pauser)
	commit := func(point int64) {
		for _, d := range disks {
			d.t.Commit(point)
			if err := d.t.Save(); err != nil {
				a.log.Warn("write tracking: saving the tracker's state failed; a restart counts afresh", "machine", cfg.Name, "disk", d.path, "err", err)
			}
		}
	}
	if fz.err != nil {
		// The trackers cannot say where they stand: count from the next cut.
		a.log.Warn("write tracking: the freeze failed; this cycle's view is made without it", "machine", cfg.Name, "err", fz.err)
		a.tracking.forget(cfg.Name)
		v, err := take()
		if err == nil {
			v.Notes = append(v.Notes, "no tracked freeze: "+fz.err.Error())
		}
		return v, capturedView{}, err
	}
	if fz.caps == nil {
		a.log.Info("write tracking: this cycle's view is made without it", "machine", cfg.Name, "reason", fz.why, "frozen_ms", fz.frozen.Milliseconds())
		v, err := take()
		if err == nil {
			v.AfterKeep = commit
			v.Notes = append(v.Notes, "no tracked freeze: "+fz.why)
		}
		return v, capturedView{}, err
	}
	vds := make([]snapshot.ViewDisk, len(disks))
	sds := snapDisks(cfg)
	var bytes int64
	for i, d := range disks {
		vds[i] = snapshot.ViewDisk{Name: cfg.Disks[i].Name, Source: d.path, Path: d.path}
		bytes += fz.caps[i].bytes()
	}
	note := fmt.Sprintf("frozen %d ms, %d bytes captured (%d read in the freeze, %d pre-copied in %d rounds)",
		fz.frozen.Milliseconds(), bytes, fz.inFreeze, fz.precopied, fz.rounds)
	v := snapshot.NewView(fz.instant, snapshot.CrashConsistent, method, vds, append(notes, note),
		func(keep int64) error {
			if keep == 0 {
				return nil // the trackers keep the pages pending
			}
			commit(keep)
			return a.taker.DropBases(cfg.Name, sds)
		})
	return v, capturedView{disks: fz.caps, base: fz.base}, nil
}

// frozenCapture is what one freeze gave.
type frozenCapture struct {
	instant time.Time
	frozen  time.Duration
	caps    []*captured // nil: not captured (why says why)
	base    int64
	why     string
	err     error
	// leftFrozen: a thaw failed (err says which); the freezing note stays.
	leftFrozen bool
	timedOut   bool  // the last try's freeze ran out
	inFreeze   int64 // bytes read while frozen, in the last try
	precopied  int64 // bytes read before, by the pre-copy
	rounds     int   // the pre-copy's rounds
}

// freezeAndCapture makes a tracked freeze's capture: a pre-copy while the
// machine runs (agent/precopy.go), then every mount frozen at once, every
// tracker cut, the blocks left to read read, and the thaw. Between freeze
// and thaw it does nothing but reads and the ioctls, on descriptors opened
// before: the log, the state directory and anything else may be on a
// frozen filesystem (the log is, when the admin put it there), and a
// write to it would wait for the thaw. A timer thaws after
// Config.MaxFreeze whatever happens; a freeze that runs out is tried
// again after another pre-copy, up to maxFreezeTries times.
//
// With pauser (block devices with no mounted filesystem, and a source
// driver that can pause the machine), the machine is paused after the
// mounts are frozen and resumed at the thaw, by the same timer.
func (a *Agent) freezeAndCapture(cfg msg.MachineConfig, disks []*trackedDisk, mounts []string, pauser snapshot.Driver) (fz frozenCapture) {
	readers := make([]frozenReader, len(disks))
	var mfds []*os.File
	defer func() {
		for _, r := range readers {
			if r != nil {
				r.Close()
			}
		}
		for _, f := range mfds {
			f.Close()
		}
	}()
	for i, d := range disks {
		var err error
		if readers[i], err = d.open(); err != nil {
			fz.err = err
			return fz
		}
	}
	for _, m := range mounts {
		f, err := os.Open(m)
		if err != nil {
			fz.err = err
			return fz
		}
		mfds = append(mfds, f)
	}
	// A filesystem stays frozen after the process that froze it dies, and
	// a block tracker's cut drains the kernel's bitmap into this process's
	// memory: the mounts are written down before the first cut (of the
	// pre-copy), and the next start thaws them and drops the block
	// trackers' saved state (thawLeftFrozen). The note goes once the
	// trackers' state is saved.
	note := mounts
	if pauser != nil {
		note = append(slices.Clone(mounts), pausedLine)
	}
	if err := a.noteFreezing(cfg.Name, note); err != nil {
		fz.err = err
		return fz
	}
	pre := newPrecopy(cfg)
	for try := 1; ; try++ {
		pre.run(a, cfg, disks, readers)
		var fr frozenRead
		fz, fr = a.freezeOnce(cfg, disks, mounts, mfds, readers, pre, pauser)
		if fz.err != nil || !fz.timedOut || try == maxFreezeTries {
			break
		}
		// The blocks the cut named were not all read: they must be, after
		// the next cut.
		if pre.off == "" {
			for i := range pre.disks {
				pre.disks[i].carry = fr.reads[i]
			}
		}
		a.log.Info("write tracking: the freeze ran out; thawed, trying again after another pre-copy", "machine", cfg.Name, "try", try, "max_freeze", a.cfg.MaxFreeze)
	}
	fz.precopied, fz.rounds = pre.read, pre.rounds
	saved := !fz.leftFrozen
	for _, d := range disks {
		if err := d.t.Save(); err != nil {
			// The note stays: the next start counts afresh.
			saved = false
			a.log.Warn("write tracking: saving the tracker's state failed", "machine", cfg.Name, "disk", d.path, "err", err)
		}
	}
	if saved {
		a.noteFreezing(cfg.Name, nil)
	}
	if fz.timedOut {
		fz.caps, fz.why = nil, fmt.Sprintf("the freeze timed out %d times: reading the changed blocks took longer than the freeze may last (%s, --max-freeze)", maxFreezeTries, a.cfg.MaxFreeze)
	}
	return fz
}

// freezeOnce freezes every mount, cuts and reads, and thaws.
func (a *Agent) freezeOnce(cfg msg.MachineConfig, disks []*trackedDisk, mounts []string, mfds []*os.File, readers []frozenReader, pre *precopy, pauser snapshot.Driver) (fz frozenCapture, fr frozenRead) {
	// The log may be on a filesystem about to be frozen: its records wait
	// in memory until the thaw (logfreeze.go).
	a.logs.hold()
	defer a.logs.release()
	// thaw runs once, from the timer or from here; the mutex also hands
	// the timer's error over.
	var (
		thawMu  sync.Mutex
		thawed  atomic.Bool
		thawErr error
		frozen  []int // indexes into mounts
		paused  bool  // the source driver was asked to pause the machine
	)
	thaw := func() bool {
		thawMu.Lock()
		defer thawMu.Unlock()
		if thawed.Load() {
			return false
		}
		thawed.Store(true)
		for _, i := range frozen {
			if err := snapshot.ThawFile(mfds[i]); err != nil {
				// Try once more by path: a filesystem left frozen stops
				// every writer on it.
				if snapshot.Thaw(mounts[i]) != nil {
					thawErr = errors.Join(thawErr, fmt.Errorf("thaw %s: %w", mounts[i], err))
				}
			}
		}
		if paused {
			// From the timer too: it runs the driver's resume command,
			// on no frozen filesystem. One that fails leaves the note,
			// and the next start resumes the machine (resumeLeftPaused).
			rctx, cancel := context.WithTimeout(context.Background(), resumeTimeout)
			if _, err := pauser.Run(rctx, "resume"); err != nil {
				thawErr = errors.Join(thawErr, fmt.Errorf("source driver resume: %w", err))
			}
			cancel()
		}
		return true
	}
	for i, f := range mfds {
		if err := snapshot.FreezeFile(f); err != nil {
			thaw()
			fz.err = errors.Join(fmt.Errorf("freeze %s: %w", mounts[i], err), thawErr)
			fz.leftFrozen = thawErr != nil
			return fz, fr
		}
		frozen = append(frozen, i)
	}
	if pauser != nil {
		thawMu.Lock()
		paused = true // a pause that fails half-way is resumed all the same
		thawMu.Unlock()
		pctx, cancel := context.WithTimeout(context.Background(), a.cfg.MaxFreeze)
		_, err := pauser.Run(pctx, "pause")
		cancel()
		if err != nil {
			thaw()
			fz.err = errors.Join(fmt.Errorf("source driver pause: %w", err), thawErr)
			fz.leftFrozen = thawErr != nil
			return fz, fr
		}
	}
	fz.instant = a.cfg.Now()
	timer := time.AfterFunc(a.cfg.MaxFreeze, func() { thaw() })
	fr = a.captureFrozen(cfg, disks, readers, pre, thawed.Load)
	timer.Stop()
	// Ran out: the timer thawed first, or the capture outlasted the bound
	// before the timer's goroutine got to run (a busy machine).
	early := a.cfg.Now().Sub(fz.instant) > a.cfg.MaxFreeze
	if !thaw() {
		early = true
	}
	fz.frozen = a.cfg.Now().Sub(fz.instant)
	// How long the writers of the frozen filesystems were stopped (held,
	// like any record, until the release below).
	a.log.Debug("write tracking: thawed", "machine", cfg.Name, "frozen", fz.frozen)
	thawMu.Lock()
	fz.err = thawErr
	thawMu.Unlock()
	fz.leftFrozen = fz.err != nil
	fz.why, fz.inFreeze = fr.why, fr.bytes
	switch {
	case fz.err != nil:
	case early:
		fz.timedOut = true
	case fr.why == "":
		fz.base = fr.cuts[0].Base
		fz.caps = make([]*captured, len(disks))
		for i, c := range fr.cuts {
			var err error
			if fz.caps[i], err = pre.compose(i, c.Ranges, fr.caps[i], fr.sizes[i]); err != nil {
				fz.caps, fz.why = nil, err.Error()
				break
			}
		}
	}
	return fz, fr
}

// frozenRead is what one freeze's cut and read gave.
type frozenRead struct {
	cuts  []track.Cut
	sizes []int64
	reads [][]track.Range // per disk, what the freeze had to read
	caps  []*captured     // what it read
	bytes int64
	why   string // why the cuts cannot be used ("" when they can)
}

// captureFrozen cuts the trackers of frozen disks and reads what the
// pre-copy left (everything pending, without one).
func (a *Agent) captureFrozen(cfg msg.MachineConfig, disks []*trackedDisk, readers []frozenReader, pre *precopy, stop func() bool) (fr frozenRead) {
	fr.cuts, fr.why = cutAll(disks)
	if fr.why != "" {
		return fr
	}
	holdInFreeze()
	fr.sizes = make([]int64, len(disks))
	fr.reads = make([][]track.Range, len(disks))
	var total int64
	for i, c := range fr.cuts {
		fr.sizes[i] = readers[i].Size()
		fr.reads[i] = pre.toRead(i, c)
		total += capturedBytes(c.Ranges, int64(cfg.Disks[i].BlockSize), fr.sizes[i])
	}
	if total > a.cfg.MaxCapture {
		fr.why = fmt.Sprintf("%d changed bytes exceed what one capture may hold (%d)", total, a.cfg.MaxCapture)
		return fr
	}
	fr.caps = make([]*captured, len(disks))
	for i := range fr.cuts {
		var err error
		if fr.caps[i], err = capture(readers[i], fr.reads[i], int64(cfg.Disks[i].BlockSize), fr.sizes[i], stop); err != nil {
			fr.why = err.Error()
			return fr
		}
		fr.bytes += fr.caps[i].bytes()
	}
	if !stop() {
		fr.why = writtenWhileFrozen(disks)
	}
	return fr
}

// writtenWhileFrozen cuts the trackers of block devices again, still
// frozen, and says which device was written since the first cut: nothing
// may reach a disk whose filesystems are all frozen, so a write there
// came from a partition with no mounted filesystem or a writer of the
// raw device, and the blocks just read need not be of one instant. (An
// image file's writers all wait for the thaw.)
func writtenWhileFrozen(disks []*trackedDisk) string {
	for _, d := range disks {
		if !d.rawDevice {
			continue
		}
		c, err := d.t.Cut()
		switch {
		case err != nil:
			return err.Error()
		case c.Lost != "":
			return "write tracking lost its window: " + c.Lost
		case len(c.Fresh) > 0:
			return fmt.Sprintf("%s was written while its filesystems were frozen (%d bytes; a partition with no mounted filesystem, or a writer of the device itself): the blocks read are not of one instant",
				d.path, rangeBytes(c.Fresh))
		}
	}
	return ""
}

func rangeBytes(rs []track.Range) int64 {
	var n int64
	for _, r := range rs {
		n += r.Length
	}
	return n
}

// ensure returns the machine's trackers, starting the missing ones and
// restarting those whose file was replaced.
func (t *trackers) ensure(machine string, want []*trackedDisk) ([]*trackedDisk, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	have := t.files[machine]
	same := len(have) == len(want)
	for i := range want {
		if same && (have[i].path != want[i].path || have[i].id != want[i].id) {
			same = false
		}
	}
	if same {
		return have, nil
	}
	closeAll(have)
	delete(t.files, machine)
	for i, d := range want {
		wt, err := d.start()
		if err != nil {
			closeAll(want[:i])
			return nil, err
		}
		d.t = wt
	}
	if t.files == nil {
		t.files = map[string][]*trackedDisk{}
	}
	t.files[machine] = want
	delete(t.refused, machine)
	return want, nil
}

// refuse logs once why a machine is not tracked.
func (t *trackers) refuse(machine, why string, log *slog.Logger) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.refused[machine] == why {
		return
	}
	if t.refused == nil {
		t.refused = map[string]string{}
	}
	t.refused[machine] = why
	log.Warn("write tracking: not tracking this machine", "machine", machine, "reason", why)
}

// forget makes the machine's trackers count again from their next cut.
func (t *trackers) forget(machine string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, d := range t.files[machine] {
		d.t.Commit(0)
		d.t.Save()
	}
}

// stop closes a machine's trackers (nil: every machine's).
func (t *trackers) stop(machine *string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for m, ds := range t.files {
		if machine == nil || *machine == m {
			closeAll(ds)
			delete(t.files, m)
		}
	}
}

func closeAll(ds []*trackedDisk) {
	for _, d := range ds {
		if d.t != nil {
			d.t.Close()
		}
	}
}

// resumeTimeout bounds the source driver's resume at a thaw.
const resumeTimeout = 30 * time.Second

// pausedLine, in a freezing note, says the machine was paused through its
// source driver as well.
const pausedLine = "#driver-pause"

// freezingFile, in the state directory, is the prefix of the notes that
// name the filesystems the agent is freezing while it does, one mount
// point a line: one note per machine ("freezing.<machine>", escaped), so
// that two machines' freezes at once do not remove each other's. (A note
// named just "freezing" is a previous release's; it is read the same.)
const freezingFile = "freezing"

// freezingNote is machine's note.
func (a *Agent) freezingNote(machine string) string {
	return filepath.Join(a.cfg.StateDir, freezingFile+"."+url.PathEscape(machine))
}

// noteFreezing writes down (durably) the mounts of machine about to be
// frozen, or removes the note (none).
func (a *Agent) noteFreezing(machine string, mounts []string) error {
	p := a.freezingNote(machine)
	if len(mounts) == 0 {
		return os.Remove(p)
	}
	return fsutil.WriteFileAtomic(p, []byte(strings.Join(mounts, "\n")), 0o600)
}

// thawLeftFrozen thaws the filesystems a previous run was freezing when
// it died (killed within the freeze's two seconds): nothing else would,
// and every writer of those filesystems would wait for ever. The block
// trackers' saved state may miss that run's last cut: it is dropped.
func (a *Agent) thawLeftFrozen() {
	notes, _ := filepath.Glob(filepath.Join(a.cfg.StateDir, freezingFile+".*"))
	if _, err := os.Stat(filepath.Join(a.cfg.StateDir, freezingFile)); err == nil {
		notes = append(notes, filepath.Join(a.cfg.StateDir, freezingFile))
	}
	if len(notes) == 0 {
		return
	}
	for _, p := range notes {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, mount := range strings.Split(string(b), "\n") {
			if mount == pausedLine {
				if m, ok := strings.CutPrefix(filepath.Base(p), freezingFile+"."); ok {
					if name, err := url.PathUnescape(m); err == nil {
						a.pausedLeft.Store(name, true)
						a.log.Warn("a previous run paused this machine through its source driver for a freeze and died: it is resumed when its configuration arrives", "machine", name)
					}
				}
				continue
			}
			if mount == "" {
				continue
			}
			if err := snapshot.Thaw(mount); err != nil {
				a.log.Info("the filesystem a previous run was freezing is not frozen", "mount", mount, "err", err)
			} else {
				a.log.Warn("thawed the filesystem a previous run left frozen", "mount", mount)
			}
		}
	}
	if err := os.RemoveAll(blockStateDir(a.cfg.StateDir)); err == nil {
		for _, p := range notes {
			os.Remove(p)
		}
	}
}

// resumeLeftPaused resumes a machine that a previous run paused for a
// freeze and died: its source driver's resume, once, logged either way.
func (a *Agent) resumeLeftPaused(ctx context.Context, machine string, drv snapshot.Driver) {
	if !drv.Has("resume") {
		a.log.Error("a previous run paused this machine and died, and its source driver has no resume command now: resume it by hand", "machine", machine)
		return
	}
	if _, err := drv.Run(ctx, "resume"); err != nil {
		a.log.Error("resuming the machine a previous run left paused failed: resume it by hand", "machine", machine, "err", err)
		return
	}
	a.log.Warn("resumed the machine a previous run left paused", "machine", machine)
}

// fileTracker is a raw image file's tracker (agent/track): it lives as
// long as the process, so a restart counts afresh.
type fileTracker struct{ f *track.File }

var _ writeTracker = fileTracker{}

func (t fileTracker) Cut() (track.Cut, error) { return t.f.Cut(cutTimeout) }
func (t fileTracker) Commit(point int64)      { t.f.Commit(point) }
func (t fileTracker) Save() error             { return nil }
func (t fileTracker) Close() error            { return t.f.Close() }

// trackedFile is the trackedDisk of a raw image file.
func trackedFile(path string, ino uint64) *trackedDisk {
	return &trackedDisk{
		path: path,
		id:   fmt.Sprintf("ino %d", ino),
		start: func() (writeTracker, error) {
			f, err := track.Start(path)
			if err != nil {
				return nil, err
			}
			return fileTracker{f}, nil
		},
		open: func() (frozenReader, error) {
			f, err := os.Open(path)
			if err != nil {
				return nil, err
			}
			return statFile{f}, nil
		},
	}
}

// statFile is a file whose size is asked when needed: in the freeze, it
// is the size at the frozen instant. An error makes it 0, and a cycle
// fails on an empty disk.
type statFile struct{ *os.File }

func (f statFile) Size() int64 {
	st, err := f.Stat()
	if err != nil {
		return 0
	}
	return st.Size()
}
