package snapshot

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Consistency levels (the words the controller stores).
const (
	AppConsistent   = "app-consistent"
	CrashConsistent = "crash-consistent"
	Inconsistent    = "inconsistent"
)

// Methods say how a view was made, for the point's record.
const (
	MethodReflink     = "reflink"
	MethodBtrfs       = "btrfs-snapshot"
	MethodPauseBtrfs  = "driver-pause+btrfs-snapshot"
	MethodPauseClone  = "driver-pause+reflink"
	MethodPoweredOff  = "powered-off"
	MethodDirect      = "direct-read"
	MethodCloneSerial = "reflink-per-disk"
	// MethodTrackedFreeze: the disks' filesystem frozen for as long as it
	// takes to read the blocks a write tracker saw change (agent/track).
	MethodTrackedFreeze = "tracked-freeze"
	// MethodQuietFile: the live image files read directly, and not one
	// of them written from before the first read to after the last
	// (quiet.go).
	MethodQuietFile = "quiet-file"
	// MethodPauseTracked: block devices with no mounted filesystem, the
	// machine paused by its source driver for as long as it takes to
	// read the blocks a write tracker saw change.
	MethodPauseTracked = "driver-pause+tracked"
)

// viewsDir is the hidden directory, next to the images, that holds clones.
const viewsDir = ".ferry-views"

// Bounds of a freeze (Taker.MaxFreeze, `ferry-agent run --max-freeze`):
// how long filesystems stay frozen unless configured otherwise
// (DESIGN.md: ≤ 2 s), and the most that may be configured. A frozen
// filesystem stops every writer of it.
const (
	DefaultMaxFreeze = 2 * time.Second
	MaxFreezeLimit   = 60 * time.Second
)

// CheckMaxFreeze refuses a freeze bound outside (0, MaxFreezeLimit].
func CheckMaxFreeze(d time.Duration) error {
	if d <= 0 || d > MaxFreezeLimit {
		return fmt.Errorf("max freeze %s: want more than 0s and at most %s (a frozen filesystem stops every writer of it; default %s)", d, MaxFreezeLimit, DefaultMaxFreeze)
	}
	return nil
}

// Driver is what the taker needs from a machine's source driver.
type Driver interface {
	Has(action string) bool
	Run(ctx context.Context, action string) (string, error)
	Status(ctx context.Context) (string, error)
}

// Disk is one disk of the machine at the source.
type Disk struct {
	Name string
	Path string
}

// Request describes the view wanted.
type Request struct {
	Machine      string
	Disks        []Disk
	Driver       Driver // may be nil
	App          bool   // quiesce for an app-consistent view
	PreSnapshot  string
	PostSnapshot string
	Freeze       []string
	Env          map[string]string
	RunCommand   func(ctx context.Context, line string, env map[string]string) error
}

// ViewDisk is one disk of a view: read Path (a clone, a snapshot file, or
// the source itself).
type ViewDisk struct {
	Name   string
	Source string
	Path   string
	Cloned bool // Path is an immutable reflink clone or snapshot file
}

// View is a point-in-time view of a machine's disks.
type View struct {
	Instant     time.Time
	Consistency string
	Method      string
	// Why says, for an inconsistent view, why no consistent one could be
	// made (the point's recorded reason); "" otherwise.
	Why   string
	Notes []string
	Disks []ViewDisk

	// AfterKeep, when set, runs once the view is kept for a point.
	AfterKeep func(point int64)

	release func(keepAs int64) error
	once    sync.Once
	// readDone, when set, settles the view's level once the cycle has
	// read it for the last time (ReadDone).
	readDone func(v *View)
	doneOnce sync.Once
}

// NewView is a view made outside the taker; release runs once, on Keep
// (with the point) or Discard (with 0).
func NewView(instant time.Time, consistency, method string, disks []ViewDisk, notes []string, release func(keep int64) error) *View {
	return &View{Instant: instant, Consistency: consistency, Method: method, Disks: disks, Notes: notes, release: release}
}

// Note is the method and the reason in one line, what cycle.end's note
// carries for controllers that predate its method and reason.
func (v *View) Note() string {
	if r := v.Reason(); r != "" {
		return v.Method + ": " + r
	}
	return v.Method
}

// Reason is what the point's record says of the view besides its
// method: why it is inconsistent (first, when it is), then the notes.
func (v *View) Reason() string {
	parts := v.Notes
	if v.Why != "" {
		parts = append([]string{v.Why}, v.Notes...)
	}
	return strings.Join(parts, "; ")
}

// ReadDone tells the view that the cycle has read from it for the last
// time; the cycle calls it before it ends the point, whose level is the
// view's from then on. A quiet-file view checks then that no image was
// written since the view was taken, and if one was it becomes what it
// is: a direct read, inconsistent, saying so. It runs once.
func (v *View) ReadDone() {
	v.doneOnce.Do(func() {
		if v.readDone != nil {
			v.readDone(v)
		}
	})
}

// Keep makes this view the base of the next cycle's change detection: its
// clones are renamed after point and older bases are removed.
func (v *View) Keep(point int64) error {
	var err error
	v.once.Do(func() {
		err = v.release(point)
		if err == nil && v.AfterKeep != nil {
			v.AfterKeep(point)
		}
	})
	return err
}

// Discard removes the view's clones (the cycle failed).
func (v *View) Discard() error {
	var err error
	v.once.Do(func() { err = v.release(0) })
	return err
}

// Taker makes views.
type Taker struct {
	Log *slog.Logger
	Now func() time.Time
	// MaxFreeze bounds how long the filesystems named for an
	// app-consistent view stay frozen (0: DefaultMaxFreeze).
	MaxFreeze time.Duration

	// stamps remembers, per filesystem, whether its timestamps tell
	// every write apart (quiet.go).
	stamps timestampChecks
}

func (t *Taker) maxFreeze() time.Duration {
	if t.MaxFreeze > 0 {
		return t.MaxFreeze
	}
	return DefaultMaxFreeze
}

func (t *Taker) logger() *slog.Logger {
	if t.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.Log
}

// Base returns the clone kept for point head of a disk, if there is one.
func (t *Taker) Base(machine string, d Disk, head int64) (string, bool) {
	if head <= 0 {
		return "", false
	}
	for _, p := range []string{
		filepath.Join(filepath.Dir(d.Path), viewsDir, machine, d.Name+".p"+strconv.FormatInt(head, 10)),
	} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, true
		}
	}
	if root, err := SubvolumeRoot(d.Path); err == nil {
		rel, err := filepath.Rel(root, d.Path)
		if err == nil {
			p := filepath.Join(root, viewsDir, machine+".p"+strconv.FormatInt(head, 10), rel)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
				return p, true
			}
		}
	}
	return "", false
}

// Take makes a view of every disk of the request.
func (t *Taker) Take(ctx context.Context, r Request) (*View, error) {
	if len(r.Disks) == 0 {
		return nil, errors.New("snapshot: no disks")
	}
	now := t.Now
	if now == nil {
		now = time.Now
	}
	log := t.logger()
	v := &View{release: func(int64) error { return nil }}

	quiesced, quiesceNotes, unquiesce := t.quiesce(ctx, r)
	v.Notes = append(v.Notes, quiesceNotes...)
	err := t.make(ctx, r, v, now)
	if uerr := unquiesce(); uerr != nil {
		v.Notes = append(v.Notes, uerr.Error())
		quiesced = false
	}
	if err != nil {
		return nil, err
	}
	if r.App && quiesced && v.Consistency == CrashConsistent {
		v.Consistency = AppConsistent
	}
	log.Debug("view taken", "machine", r.Machine, "method", v.Method, "consistency", v.Consistency, "notes", v.Notes)
	return v, nil
}

// quiesce runs the pre-snapshot command and freezes the named mounts for an
// app-consistent view. It returns whether everything quiesced, notes, and
// the undo (thaw, post-snapshot), which the caller runs right after the view.
func (t *Taker) quiesce(ctx context.Context, r Request) (ok bool, notes []string, undo func() error) {
	undo = func() error { return nil }
	if !r.App {
		return false, nil, undo
	}
	if r.PreSnapshot == "" && len(r.Freeze) == 0 {
		return false, []string{"app-consistent requested but no --pre-snapshot or --freeze is configured"}, undo
	}
	ok = true
	if r.PreSnapshot != "" {
		if err := r.RunCommand(ctx, r.PreSnapshot, r.Env); err != nil {
			ok = false
			notes = append(notes, "pre-snapshot failed: "+err.Error())
		}
	}
	var frozen []string
	var mu sync.Mutex
	thawed := false
	thawAll := func() []string {
		mu.Lock()
		defer mu.Unlock()
		if thawed {
			return nil
		}
		thawed = true
		var errs []string
		for _, m := range frozen {
			if err := Thaw(m); err != nil {
				errs = append(errs, err.Error())
			}
		}
		return errs
	}
	for _, m := range r.Freeze {
		if holdsDisk(m, r.Disks) {
			// FICLONE on a frozen filesystem waits for the thaw: freezing the
			// filesystem of an image being cloned would deadlock.
			notes = append(notes, "not freezing "+m+": it holds a protected image")
			continue
		}
		if err := Freeze(m); err != nil {
			ok = false
			notes = append(notes, err.Error())
			continue
		}
		frozen = append(frozen, m)
	}
	// If making the view overruns the bound, thaw anyway: the application
	// must not stall. The undo then reports it and the view is not
	// app-consistent.
	limit := t.maxFreeze()
	watchdog := time.AfterFunc(limit, func() { thawAll() })
	return ok, notes, func() error {
		stopped := watchdog.Stop()
		errs := thawAll()
		if !stopped && len(frozen) > 0 {
			errs = append(errs, fmt.Sprintf("the freeze timed out: making the view took longer than the freeze may last (%s, --max-freeze), so it was lifted early", limit))
		}
		if r.PostSnapshot != "" {
			if err := r.RunCommand(context.WithoutCancel(ctx), r.PostSnapshot, r.Env); err != nil {
				errs = append(errs, "post-snapshot failed: "+err.Error())
			}
		}
		if len(errs) > 0 {
			return errors.New(strings.Join(errs, "; "))
		}
		return nil
	}
}

// holdsDisk reports whether mount is the filesystem of one of the disks.
func holdsDisk(mount string, disks []Disk) bool {
	ms, err := os.Stat(mount)
	if err != nil {
		return false
	}
	for _, d := range disks {
		if ds, err := os.Stat(d.Path); err == nil && sameDevice(ms, ds) {
			return true
		}
	}
	return false
}

// make builds the view itself and sets v's method and consistency.
func (t *Taker) make(ctx context.Context, r Request, v *View, now func() time.Time) error {
	stamp := strconv.FormatInt(now().UnixNano(), 10)
	poweredOff := false
	// power says, for the reason of an inconsistent view, what is known
	// of the machine's power.
	power := "nothing says the machine is powered off (its source driver has no status command)"
	if r.Driver != nil && r.Driver.Has("status") {
		st, err := r.Driver.Status(ctx)
		if err != nil {
			v.Notes = append(v.Notes, "status: "+err.Error())
			power = "the machine's power state is unknown (its status failed)"
		} else {
			power = "the machine is " + st
		}
		poweredOff = err == nil && (st == "stopped" || st == "absent")
	}
	allFiles, block := true, ""
	for _, d := range r.Disks {
		st, err := os.Stat(d.Path)
		if err != nil {
			return fmt.Errorf("disk %s: %w", d.Name, err)
		}
		if !st.Mode().IsRegular() {
			allFiles = false
			block = cmp.Or(block, d.Name)
		}
	}

	// Several images in one btrfs subvolume: one atomic snapshot.
	if allFiles && len(r.Disks) > 1 {
		if ok, err := t.btrfsView(ctx, r, v, stamp, now, poweredOff); ok || err != nil {
			if err == nil && poweredOff {
				v.Notes = append(v.Notes, "machine powered off")
			}
			return err
		}
	}
	if allFiles {
		paused := false
		if len(r.Disks) > 1 && !poweredOff && r.Driver != nil && r.Driver.Has("pause") && r.Driver.Has("resume") {
			if _, err := r.Driver.Run(ctx, "pause"); err != nil {
				v.Notes = append(v.Notes, "pause failed: "+err.Error())
			} else {
				paused = true
			}
		}
		clones, err := t.cloneAll(r, stamp)
		instant := now()
		if paused {
			if _, rerr := r.Driver.Run(context.WithoutCancel(ctx), "resume"); rerr != nil {
				v.Notes = append(v.Notes, "resume failed: "+rerr.Error())
			}
		}
		if err == nil {
			v.Instant = instant
			v.Disks = clones
			v.release = t.releaseClones(r, clones)
			switch {
			case poweredOff:
				v.Method, v.Consistency = MethodPoweredOff, CrashConsistent
				v.Notes = append(v.Notes, "machine powered off; read through reflink clones")
			case len(r.Disks) == 1:
				v.Method, v.Consistency = MethodReflink, CrashConsistent
			case paused:
				v.Method, v.Consistency = MethodPauseClone, CrashConsistent
			default:
				v.Method, v.Consistency = MethodCloneSerial, Inconsistent
				v.Why = fmt.Sprintf("%d disks cloned one after another while the machine runs and its source has no pause: no common instant (configure --pause/--resume, or keep the images in one btrfs subvolume)", len(r.Disks))
			}
			return nil
		}
		if !errors.Is(err, ErrNotSupported) {
			return err
		}
		t.logger().Debug("no reflink view", "machine", r.Machine, "err", err)
	}
	// Direct read of the live disks.
	for _, d := range r.Disks {
		v.Disks = append(v.Disks, ViewDisk{Name: d.Name, Source: d.Path, Path: d.Path})
	}
	if poweredOff {
		v.Instant = now()
		v.Method, v.Consistency = MethodPoweredOff, CrashConsistent
		return nil
	}
	v.Method, v.Consistency = MethodDirect, Inconsistent
	why := directReadWhy(r, block, power)
	if block != "" {
		v.Instant, v.Why = now(), why
		return nil
	}
	// Image files that nobody writes while the cycle reads them are a
	// crash-consistent point: stamp them now, before the first read, and
	// check them again after the last (View.ReadDone).
	stamps, whyNot := t.quietStamps(r)
	v.Instant = now()
	if whyNot != "" {
		v.Why = why + "; no quiet-file view: " + whyNot
		return nil
	}
	v.Method, v.Consistency = MethodQuietFile, CrashConsistent
	v.readDone = func(v *View) { checkQuiet(v, r, stamps, why) }
	return nil
}

// directReadWhy says why a running machine's disks were read directly:
// no view of a block device, or no reflink or snapshot on the images'
// filesystem.
func directReadWhy(r Request, block, power string) string {
	if block != "" {
		return "disk " + block + " is a block device, of which Ferry makes no snapshot view, and " + power + ": its disks were read while it may be writing them"
	}
	what := "no reflink or snapshot view on this filesystem"
	if fs := FSType(r.Disks[0].Path); fs != "" {
		what += " (" + fs + ")"
	}
	return what + ", and " + power + ": its disks were read while it may be writing them (keep the images on a reflink filesystem such as XFS or btrfs)"
}

// DropBases removes the clones kept as bases of a machine's disks: a view
// made without a clone replaced them, and a kept clone shares the image's
// extents, so that every write into the image would copy on write.
func (t *Taker) DropBases(machine string, disks []Disk) error {
	var errs []error
	for _, d := range disks {
		dir := t.cloneDir(Request{Machine: machine}, d)
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), d.Name+".p") {
				errs = append(errs, os.Remove(filepath.Join(dir, e.Name())))
			}
		}
	}
	return errors.Join(errs...)
}

func (t *Taker) cloneDir(r Request, d Disk) string {
	return filepath.Join(filepath.Dir(d.Path), viewsDir, r.Machine)
}

func (t *Taker) cloneAll(r Request, stamp string) ([]ViewDisk, error) {
	var out []ViewDisk
	undo := func() {
		for _, c := range out {
			os.Remove(c.Path)
		}
	}
	for _, d := range r.Disks {
		dir := t.cloneDir(r, d)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			undo()
			return nil, err
		}
		dst := filepath.Join(dir, d.Name+".c"+stamp)
		if err := Clone(d.Path, dst); err != nil {
			undo()
			return nil, err
		}
		out = append(out, ViewDisk{Name: d.Name, Source: d.Path, Path: dst, Cloned: true})
	}
	return out, nil
}

// releaseClones returns the view's release: keep renames each clone to
// .p<point> and deletes every other clone of the disk; discard deletes the
// new clones.
func (t *Taker) releaseClones(r Request, clones []ViewDisk) func(int64) error {
	return func(keep int64) error {
		var errs []error
		for i, c := range clones {
			if keep == 0 {
				errs = append(errs, os.Remove(c.Path))
				continue
			}
			dir := t.cloneDir(r, r.Disks[i])
			kept := filepath.Join(dir, c.Name+".p"+strconv.FormatInt(keep, 10))
			if err := os.Rename(c.Path, kept); err != nil {
				errs = append(errs, err)
				continue
			}
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				n := e.Name()
				if strings.HasPrefix(n, c.Name+".") && n != filepath.Base(kept) && !strings.HasPrefix(n, c.Name+".c") {
					errs = append(errs, os.Remove(filepath.Join(dir, n)))
				}
			}
		}
		return errors.Join(errs...)
	}
}

// btrfsView snapshots the common subvolume of every disk, if there is one.
//
// The snapshot is atomic, but it first writes back the subvolume's dirty
// pages one file after another: a writer that goes through the host's page
// cache (e.g. qemu's default cache=writeback) and writes meanwhile can
// leave a later write in the snapshot without an earlier one. Writers that
// bypass the page cache (O_DIRECT: Hyper-V, qemu cache=none) cannot. So
// when the machine's driver can pause and resume, the snapshot is taken
// paused.
func (t *Taker) btrfsView(ctx context.Context, r Request, v *View, stamp string, now func() time.Time, poweredOff bool) (bool, error) {
	root := ""
	for _, d := range r.Disks {
		sr, err := SubvolumeRoot(d.Path)
		if err != nil || (root != "" && sr != root) {
			return false, nil
		}
		root = sr
	}
	dir := filepath.Join(root, viewsDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	name := r.Machine + ".c" + stamp
	paused := false
	if !poweredOff && r.Driver != nil && r.Driver.Has("pause") && r.Driver.Has("resume") {
		if _, err := r.Driver.Run(ctx, "pause"); err != nil {
			v.Notes = append(v.Notes, "pause failed: "+err.Error())
		} else {
			paused = true
		}
	}
	err := SnapshotSubvolume(root, dir, name)
	instant := now()
	if paused {
		if _, rerr := r.Driver.Run(context.WithoutCancel(ctx), "resume"); rerr != nil {
			v.Notes = append(v.Notes, "resume failed: "+rerr.Error())
		}
	}
	if err != nil {
		v.Notes = append(v.Notes, err.Error())
		return false, nil
	}
	v.Instant = instant
	for _, d := range r.Disks {
		rel, _ := filepath.Rel(root, d.Path)
		v.Disks = append(v.Disks, ViewDisk{Name: d.Name, Source: d.Path, Path: filepath.Join(dir, name, rel), Cloned: true})
	}
	v.Method, v.Consistency = MethodBtrfs, CrashConsistent
	if paused {
		v.Method = MethodPauseBtrfs
	}
	v.release = func(keep int64) error {
		if keep == 0 {
			return DeleteSubvolume(dir, name)
		}
		keptName := r.Machine + ".p" + strconv.FormatInt(keep, 10)
		if err := os.Rename(filepath.Join(dir, name), filepath.Join(dir, keptName)); err != nil {
			return err
		}
		entries, _ := os.ReadDir(dir)
		var errs []error
		for _, e := range entries {
			n := e.Name()
			if strings.HasPrefix(n, r.Machine+".p") && n != keptName {
				errs = append(errs, DeleteSubvolume(dir, n))
			}
		}
		return errors.Join(errs...)
	}
	return true, nil
}

// Cleanup removes views left by a crashed cycle (clones named .c<stamp>)
// for a machine's disks; kept bases (.p<point>) stay.
func (t *Taker) Cleanup(machine string, disks []Disk) {
	seen := map[string]bool{}
	for _, d := range disks {
		dir := filepath.Join(filepath.Dir(d.Path), viewsDir, machine)
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), d.Name+".c") {
				os.Remove(filepath.Join(dir, e.Name()))
			}
		}
		if root, err := SubvolumeRoot(d.Path); err == nil && !seen[root] {
			seen[root] = true
			sdir := filepath.Join(root, viewsDir)
			entries, _ := os.ReadDir(sdir)
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), machine+".c") {
					DeleteSubvolume(sdir, e.Name())
				}
			}
		}
	}
}

// RemoveAll deletes every view of a machine (unprotect).
func (t *Taker) RemoveAll(machine string, disks []Disk) {
	t.Cleanup(machine, disks)
	for _, d := range disks {
		os.RemoveAll(filepath.Join(filepath.Dir(d.Path), viewsDir, machine))
		if root, err := SubvolumeRoot(d.Path); err == nil {
			sdir := filepath.Join(root, viewsDir)
			entries, _ := os.ReadDir(sdir)
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), machine+".p") {
					DeleteSubvolume(sdir, e.Name())
				}
			}
		}
	}
}
