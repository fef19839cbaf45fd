package track

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// TracefsRoot is where tracefs is mounted.
var TracefsRoot = "/sys/kernel/tracing"

// instancePrefix names the agent's tracefs instances: ferry-<pid>-<inode>.
const instancePrefix = "ferry-"

// bufferKB is each CPU's ring buffer in the instance: a 4 KiB write is one
// ≈ 150-byte event, so 4 MiB holds ≈ 27,000 writes between two reads.
const bufferKB = 4096

// event is one tracepoint the tracker enables, with the filter that keeps
// it to the tracked file (%[1]d: inode, %[2]d: kernel dev_t) and what an
// event of it means.
type event struct {
	system, name string
	filter       string
	// Ranged events carry the written range after pos and length (in
	// hexadecimal when hex): the pages written. The others change the
	// file in ways pages cannot describe: lost says how.
	pos, length string
	hex         bool
	lost        string
}

func (e event) ranged() bool { return e.pos != "" }

const fileFilter = "ino == %[1]d && dev == %[2]d"

// xfsEvents are the XFS tracepoints of every way a file's bytes change
// through the filesystem: buffered and direct writes (their ranges), and
// truncation, hole punching, preallocation, range shifts and remapped
// extents, which each make the window lost.
var xfsEvents = []event{
	{system: "xfs", name: "xfs_file_buffered_write", filter: fileFilter, pos: "pos 0x", length: "bytecount 0x", hex: true},
	{system: "xfs", name: "xfs_file_direct_write", filter: fileFilter, pos: "pos 0x", length: "bytecount 0x", hex: true},
	{system: "xfs", name: "xfs_setattr", filter: fileFilter, lost: "the file's attributes or size changed"},
	{system: "xfs", name: "xfs_free_file_space", filter: fileFilter, lost: "space was punched or zeroed"},
	{system: "xfs", name: "xfs_alloc_file_space", filter: fileFilter, lost: "space was preallocated or zeroed"},
	{system: "xfs", name: "xfs_collapse_file_space", filter: fileFilter, lost: "a range was collapsed"},
	{system: "xfs", name: "xfs_insert_file_space", filter: fileFilter, lost: "a range was inserted"},
	{system: "xfs", name: "xfs_reflink_remap_range", filter: "dest_ino == %[1]d && dev == %[2]d", lost: "extents were remapped into the file"},
}

// ext4Events are ext4's: buffered writes (with and without delayed
// allocation), direct writes (each step of iomap's iteration with the
// IOMAP_WRITE and IOMAP_DIRECT flags, 1 and 16: iomap_dio_rw_begin does
// not say whether it writes), and the changes pages cannot describe.
var ext4Events = []event{
	{system: "ext4", name: "ext4_write_begin", filter: fileFilter, pos: "pos ", length: "len "},
	{system: "ext4", name: "ext4_da_write_begin", filter: fileFilter, pos: "pos ", length: "len "},
	{system: "iomap", name: "iomap_iter", filter: fileFilter + " && (flags & 1) && (flags & 16)", pos: "pos 0x", length: "length 0x", hex: true},
	{system: "ext4", name: "ext4_truncate_enter", filter: fileFilter, lost: "the file was truncated"},
	{system: "ext4", name: "ext4_punch_hole", filter: fileFilter, lost: "space was punched"},
	{system: "ext4", name: "ext4_zero_range", filter: fileFilter, lost: "a range was zeroed"},
	{system: "ext4", name: "ext4_fallocate_enter", filter: fileFilter, lost: "space was allocated"},
	{system: "ext4", name: "ext4_collapse_range", filter: fileFilter, lost: "a range was collapsed"},
	{system: "ext4", name: "ext4_insert_range", filter: fileFilter, lost: "a range was inserted"},
}

// eventsByFS are the filesystems the tracker knows, by statfs magic.
var eventsByFS = map[int64]struct {
	name   string
	events []event
}{
	0x58465342: {"XFS", xfsEvents},
	0xEF53:     {"ext4", ext4Events},
}

// File tracks the writes to one file.
type File struct {
	path, inst string
	events     []event
	marker     *os.File
	pipe       *os.File
	done       chan struct{}

	mu sync.Mutex
	// cur is what was written since the last cut; pending what earlier
	// cuts handed out that no committed point holds yet.
	cur, pending      pageSet
	curLost, pendLost string
	base              int64 // the point the pending set is relative to (0: none)
	next              uint64
	waiting           map[uint64]chan struct{}
	closing           bool
	readErr           error
}

// Start begins tracking the file at path. It fails with ErrUnsupported
// when the file's filesystem has no tracker here or tracefs is not usable
// (not root, not mounted).
func Start(path string) (*File, error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return nil, err
	}
	fsys, ok := eventsByFS[int64(sfs.Type)]
	if !ok {
		return nil, fmt.Errorf("%s: %w: write tracking needs XFS or ext4 (filesystem type %#x)", path, ErrUnsupported, sfs.Type)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, err
	}
	if err := mountTracefs(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	for _, e := range fsys.events {
		if _, err := os.Stat(filepath.Join(TracefsRoot, "events", e.system, e.name)); err != nil {
			return nil, fmt.Errorf("%w: %s tracepoint %s/%s at %s: %v", ErrUnsupported, fsys.name, e.system, e.name, TracefsRoot, err)
		}
	}
	removeStaleInstances()
	kdev := uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev))
	inst := filepath.Join(TracefsRoot, "instances", fmt.Sprintf("%s%d-%d", instancePrefix, os.Getpid(), st.Ino))
	if err := os.Mkdir(inst, 0o700); err != nil {
		return nil, fmt.Errorf("%w: tracefs instance: %v", ErrUnsupported, err)
	}
	f := &File{path: path, inst: inst, events: fsys.events, done: make(chan struct{}), waiting: map[uint64]chan struct{}{}}
	started := false
	defer func() {
		if !started {
			f.teardown()
		}
	}()
	// The marker that closes a cut must come out after every event that
	// happened before it, on whichever CPU: one clock for all CPUs.
	writes := []struct{ file, value string }{
		{"trace_clock", "mono"},
		{"buffer_size_kb", strconv.Itoa(bufferKB)},
	}
	for _, e := range f.events {
		dir := filepath.Join("events", e.system, e.name)
		writes = append(writes,
			struct{ file, value string }{filepath.Join(dir, "filter"), fmt.Sprintf(e.filter, st.Ino, kdev)},
			struct{ file, value string }{filepath.Join(dir, "enable"), "1"})
	}
	writes = append(writes, struct{ file, value string }{"tracing_on", "1"})
	for _, w := range writes {
		if err := os.WriteFile(filepath.Join(inst, w.file), []byte(w.value), 0); err != nil {
			return nil, fmt.Errorf("tracefs %s: %w", w.file, err)
		}
	}
	var err error
	if f.marker, err = os.OpenFile(filepath.Join(inst, "trace_marker"), os.O_WRONLY, 0); err != nil {
		return nil, err
	}
	if f.pipe, err = os.Open(filepath.Join(inst, "trace_pipe")); err != nil {
		return nil, err
	}
	go f.read()
	started = true
	return f, nil
}

// read consumes the instance's events until Close.
func (f *File) read() {
	defer close(f.done)
	sc := bufio.NewScanner(f.pipe)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f.mu.Lock()
		f.handle(line)
		closing := f.closing
		f.mu.Unlock()
		if closing && strings.Contains(line, "ferry-close") {
			return
		}
	}
	f.mu.Lock()
	f.readErr = sc.Err()
	if f.readErr == nil {
		f.readErr = errors.New("trace pipe ended")
	}
	f.curLost = "the event reader stopped: " + f.readErr.Error()
	f.mu.Unlock()
}

// handle applies one line of trace_pipe (f.mu held).
func (f *File) handle(line string) {
	if strings.Contains(line, "[LOST") {
		f.curLost = "the kernel dropped events: " + strings.TrimSpace(line)
		return
	}
	if i := strings.Index(line, "ferry-cut-"); i >= 0 && strings.Contains(line, "tracing_mark_write") {
		n, err := strconv.ParseUint(strings.TrimSpace(line[i+len("ferry-cut-"):]), 10, 64)
		if ch, ok := f.waiting[n]; err == nil && ok {
			close(ch)
			delete(f.waiting, n)
		}
		return
	}
	for _, e := range f.events {
		if !strings.Contains(line, " "+e.name+": ") {
			continue
		}
		if !e.ranged() {
			f.curLost = e.lost
			return
		}
		pos, err1 := numField(line, e.pos, e.hex)
		n, err2 := numField(line, e.length, e.hex)
		if err1 != nil || err2 != nil {
			f.curLost = "an event could not be read: " + line
			return
		}
		f.cur.addBytes(pos, n)
		return
	}
}

// numField parses the number that follows key in line.
func numField(line, key string, hex bool) (int64, error) {
	i := strings.Index(line, key)
	if i < 0 {
		return 0, fmt.Errorf("no %q", key)
	}
	s := line[i+len(key):]
	if j := strings.IndexByte(s, ' '); j >= 0 {
		s = s[:j]
	}
	base := 10
	if hex {
		base = 16
	}
	return strconv.ParseInt(s, base, 64)
}

// Cut closes the current window: it waits until every event that happened
// before the call has been read (a marker written into the same buffers),
// then adds the window to the pending set and returns that set. Called
// with the file's filesystem frozen, the set then holds every page written
// since the point the set is relative to (Cut.Base).
func (f *File) Cut(timeout time.Duration) (Cut, error) {
	f.mu.Lock()
	f.next++
	n := f.next
	ch := make(chan struct{})
	f.waiting[n] = ch
	readErr := f.readErr
	f.mu.Unlock()
	if readErr != nil {
		return Cut{}, readErr
	}
	if _, err := fmt.Fprintf(f.marker, "ferry-cut-%d\n", n); err != nil {
		return Cut{}, fmt.Errorf("trace marker: %w", err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
		f.mu.Lock()
		delete(f.waiting, n)
		f.curLost = "a cut's marker did not come back in time"
		f.mu.Unlock()
		return Cut{}, fmt.Errorf("write tracking: the cut's marker did not come back within %s", timeout)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fresh := f.cur.ranges()
	f.pending.union(&f.cur)
	f.cur.clear()
	if f.pendLost == "" {
		f.pendLost = f.curLost
	}
	f.curLost = ""
	return Cut{Ranges: f.pending.ranges(), Fresh: fresh, Lost: f.pendLost, Base: f.base}, nil
}

// Commit records that point holds everything up to the last cut: the
// pending set starts again from it.
func (f *File) Commit(point int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending.clear()
	f.pendLost = ""
	f.base = point
}

// Close stops tracking and removes the tracefs instance.
func (f *File) Close() error {
	f.mu.Lock()
	f.closing = true
	f.mu.Unlock()
	// The reader blocks in read(2) until a line arrives: send it one.
	fmt.Fprintln(f.marker, "ferry-close")
	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
	}
	return f.teardown()
}

func (f *File) teardown() error {
	if f.pipe != nil {
		f.pipe.Close()
	}
	if f.marker != nil {
		f.marker.Close()
	}
	os.WriteFile(filepath.Join(f.inst, "tracing_on"), []byte("0"), 0)
	return os.Remove(f.inst)
}

// removeStaleInstances removes the instances of agents that are gone (a
// crash leaves them, and each holds buffer memory).
func removeStaleInstances() {
	dir := filepath.Join(TracefsRoot, "instances")
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), instancePrefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(name, "-", 2)[0])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); errors.Is(err, os.ErrNotExist) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// tracefsMu keeps two trackers from mounting tracefs at once.
var tracefsMu sync.Mutex

// mountTracefs mounts tracefs at TracefsRoot when nothing is mounted there:
// a process started by `ip netns exec` (or in a container) gets a fresh
// sysfs without it.
func mountTracefs() error {
	tracefsMu.Lock()
	defer tracefsMu.Unlock()
	if _, err := os.Stat(filepath.Join(TracefsRoot, "instances")); err == nil {
		return nil
	}
	if err := unix.Mount("nodev", TracefsRoot, "tracefs", 0, ""); err != nil {
		return fmt.Errorf("tracefs is not mounted at %s and mounting it failed: %v", TracefsRoot, err)
	}
	return nil
}
