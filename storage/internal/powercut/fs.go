package powercut

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Available reports whether this process can mount FUSE filesystems, and
// why not. It mounts one for real (an opened /dev/fuse is not enough: the
// mount also needs fusermount or the mount syscall to work): a probe file
// is written and fsync'd through it, the kernel must report a FUSE
// filesystem at the mount point, and the write must reach this package.
func Available() (bool, string) {
	if os.Geteuid() != 0 {
		return false, "powercut needs root to mount FUSE"
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("powercut needs /dev/fuse: %v", err)
	}
	f.Close()
	if err := probe(); err != nil {
		return false, fmt.Sprintf("powercut: a FUSE filesystem does not mount here: %v", err)
	}
	return true, ""
}

// fuseSuperMagic is statfs's f_type of a FUSE filesystem.
const fuseSuperMagic = 0x65735546

func probe() (err error) {
	dir, err := os.MkdirTemp("", "powercut-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	m, err := New(dir)
	if err != nil {
		return err
	}
	mounted := true
	defer func() {
		if mounted {
			if uerr := m.Unmount(); err == nil {
				err = uerr
			}
		}
	}()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type != fuseSuperMagic {
		return fmt.Errorf("%s is not a FUSE mount (f_type %#x)", dir, st.Type)
	}
	pf, err := os.Create(dir + "/probe")
	if err != nil {
		return err
	}
	_, err = pf.Write([]byte("probe"))
	if err == nil {
		err = pf.Sync()
	}
	if cerr := pf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write through the mount: %w", err)
	}
	if s := m.Stats(); !s.Names["probe"] || s.FileSyncs == 0 {
		return fmt.Errorf("the probe file's write and fsync did not reach the powercut filesystem")
	}
	mounted = false
	return m.Unmount()
}

// Mount is one mounted instance.
type Mount struct {
	Dir    string
	st     *state
	root   *dir
	server *fuse.Server
}

// New mounts an empty filesystem on mountpoint.
func New(mountpoint string) (*Mount, error) { return MountImage(mountpoint, nil) }

// MountImage mounts the durable state of a previous cut (nil: empty).
func MountImage(mountpoint string, im *Image) (*Mount, error) {
	st := &state{}
	st.stats.Names = map[string]bool{}
	var root *dir
	if im == nil {
		root = newDir(st.ino.Add(1))
	} else {
		root = snapshot(im.root, func() uint64 { return st.ino.Add(1) })
	}
	m := &Mount{Dir: mountpoint, st: st, root: root}
	zero := time.Duration(0)
	srv, err := fs.Mount(mountpoint, &node{st: st, d: root}, &fs.Options{
		MountOptions: fuse.MountOptions{FsName: "powercut", Name: "powercut", DisableXAttrs: true},
		EntryTimeout: &zero, AttrTimeout: &zero, NegativeTimeout: &zero,
	})
	if err != nil {
		return nil, fmt.Errorf("powercut: mount %s: %w", mountpoint, err)
	}
	m.server = srv
	return m, nil
}

// Cut simulates a power loss: from now on every operation fails with EIO,
// and the returned image holds only what was durable at this instant.
func (m *Mount) Cut() *Image {
	m.st.mu.Lock()
	defer m.st.mu.Unlock()
	m.st.dead = true
	var n uint64
	return &Image{root: snapshot(m.root, func() uint64 { n++; return n })}
}

// Unmount unmounts the filesystem (after Cut, or for a clean end).
func (m *Mount) Unmount() error {
	err := m.server.Unmount()
	m.server.Wait()
	return err
}

// Stats returns a copy of the counters.
func (m *Mount) Stats() Stats {
	m.st.mu.Lock()
	defer m.st.mu.Unlock()
	s := m.st.stats
	s.Names = map[string]bool{}
	for k := range m.st.stats.Names {
		s.Names[k] = true
	}
	return s
}

// node is a file or directory inode; exactly one of f and d is set.
type node struct {
	fs.Inode
	st *state
	f  *file
	d  *dir
}

var (
	_ fs.NodeLookuper  = (*node)(nil)
	_ fs.NodeGetattrer = (*node)(nil)
	_ fs.NodeSetattrer = (*node)(nil)
	_ fs.NodeCreater   = (*node)(nil)
	_ fs.NodeOpener    = (*node)(nil)
	_ fs.NodeReader    = (*node)(nil)
	_ fs.NodeWriter    = (*node)(nil)
	_ fs.NodeFsyncer   = (*node)(nil)
	_ fs.NodeFlusher   = (*node)(nil)
	_ fs.NodeMkdirer   = (*node)(nil)
	_ fs.NodeUnlinker  = (*node)(nil)
	_ fs.NodeRmdirer   = (*node)(nil)
	_ fs.NodeRenamer   = (*node)(nil)
	_ fs.NodeReaddirer = (*node)(nil)
	_ fs.NodeAllocater = (*node)(nil)
	_ fs.NodeOpendirer = (*node)(nil)
	_ fs.NodeReleaser  = (*node)(nil)
	_ fs.NodeStatfser  = (*node)(nil)
)

func (n *node) lock() (func(), syscall.Errno) {
	n.st.mu.Lock()
	if n.st.dead {
		n.st.mu.Unlock()
		return nil, syscall.EIO
	}
	return n.st.mu.Unlock, 0
}

func (n *node) child(ctx context.Context, e any) *fs.Inode {
	switch v := e.(type) {
	case *file:
		return n.NewInode(ctx, &node{st: n.st, f: v}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: v.ino})
	case *dir:
		return n.NewInode(ctx, &node{st: n.st, d: v}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: v.ino})
	}
	return nil
}

func fill(e any, a *fuse.Attr) {
	switch v := e.(type) {
	case *file:
		a.Mode = syscall.S_IFREG | 0o600
		a.Size = uint64(len(v.cur))
		a.Ino = v.ino
		a.Nlink = 1
	case *dir:
		a.Mode = syscall.S_IFDIR | 0o700
		a.Ino = v.ino
		a.Nlink = 2
	}
	a.Blksize = 4096
	a.Blocks = (a.Size + 511) / 512
}

func (n *node) self() any {
	if n.f != nil {
		return n.f
	}
	return n.d
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	unlock, errno := n.lock()
	if errno != 0 {
		return nil, errno
	}
	defer unlock()
	if n.d == nil {
		return nil, syscall.ENOTDIR
	}
	e, ok := n.d.cur[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	fill(e, &out.Attr)
	return n.child(ctx, e), 0
}

func (n *node) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	unlock, errno := n.lock()
	if errno != 0 {
		return errno
	}
	defer unlock()
	fill(n.self(), &out.Attr)
	return 0
}

func (n *node) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	unlock, errno := n.lock()
	if errno != 0 {
		return errno
	}
	defer unlock()
	if sz, ok := in.GetSize(); ok && n.f != nil {
		n.f.resize(int64(sz))
	}
	fill(n.self(), &out.Attr)
	return 0
}

func (f *file) resize(sz int64) {
	if sz <= int64(len(f.cur)) {
		f.cur = f.cur[:sz:sz]
		return
	}
	f.cur = append(f.cur, make([]byte, sz-int64(len(f.cur)))...)
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	unlock, errno := n.lock()
	if errno != 0 {
		return nil, nil, 0, errno
	}
	defer unlock()
	if e, ok := n.d.cur[name]; ok {
		if flags&syscall.O_EXCL != 0 {
			return nil, nil, 0, syscall.EEXIST
		}
		f, isFile := e.(*file)
		if !isFile {
			return nil, nil, 0, syscall.EISDIR
		}
		if flags&syscall.O_TRUNC != 0 {
			f.resize(0)
		}
		fill(f, &out.Attr)
		return n.child(ctx, f), nil, fuse.FOPEN_DIRECT_IO, 0
	}
	f := &file{ino: n.st.ino.Add(1)}
	n.d.cur[name] = f
	n.st.stats.Names[name] = true
	fill(f, &out.Attr)
	return n.child(ctx, f), nil, fuse.FOPEN_DIRECT_IO, 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	unlock, errno := n.lock()
	if errno != 0 {
		return nil, 0, errno
	}
	defer unlock()
	if flags&syscall.O_TRUNC != 0 && n.f != nil {
		n.f.resize(0)
	}
	// Direct I/O keeps the kernel page cache out of the model: every read
	// and write reaches this process.
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (n *node) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	unlock, errno := n.lock()
	if errno != 0 {
		return nil, errno
	}
	defer unlock()
	if off >= int64(len(n.f.cur)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), int64(len(n.f.cur)))
	return fuse.ReadResultData(append([]byte(nil), n.f.cur[off:end]...)), 0
}

func (n *node) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	unlock, errno := n.lock()
	if errno != 0 {
		return 0, errno
	}
	defer unlock()
	if end := off + int64(len(data)); end > int64(len(n.f.cur)) {
		n.f.resize(end)
	}
	copy(n.f.cur[off:], data)
	n.st.stats.Writes++
	return uint32(len(data)), 0
}

// Fsync makes a file's contents (fsync, fdatasync) or a directory's entries
// (fsync of a directory) durable.
func (n *node) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	unlock, errno := n.lock()
	if errno != 0 {
		return errno
	}
	defer unlock()
	if n.f != nil {
		n.f.dur = append(n.f.dur[:0:0], n.f.cur...)
		n.f.durSet = true
		n.st.stats.FileSyncs++
		return 0
	}
	n.d.dur = make(map[string]any, len(n.d.cur))
	for k, v := range n.d.cur {
		n.d.dur[k] = v
	}
	n.st.stats.DirSyncs++
	return 0
}

func (n *node) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

func (n *node) Release(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

func (n *node) Opendir(ctx context.Context) syscall.Errno {
	_, errno := n.lockCheck()
	return errno
}

func (n *node) lockCheck() (struct{}, syscall.Errno) {
	unlock, errno := n.lock()
	if errno == 0 {
		unlock()
	}
	return struct{}{}, errno
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.Blocks = 1 << 24
	out.Bfree = 1 << 23
	out.Bavail = 1 << 23
	out.NameLen = 255
	return 0
}

func (n *node) Allocate(ctx context.Context, fh fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	unlock, errno := n.lock()
	if errno != 0 {
		return errno
	}
	defer unlock()
	if end := int64(off + size); end > int64(len(n.f.cur)) {
		n.f.resize(end)
	}
	return 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	unlock, errno := n.lock()
	if errno != 0 {
		return nil, errno
	}
	defer unlock()
	if _, ok := n.d.cur[name]; ok {
		return nil, syscall.EEXIST
	}
	d := newDir(n.st.ino.Add(1))
	n.d.cur[name] = d
	n.st.stats.Names[name] = true
	fill(d, &out.Attr)
	return n.child(ctx, d), 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	unlock, errno := n.lock()
	if errno != 0 {
		return errno
	}
	defer unlock()
	e, ok := n.d.cur[name]
	if !ok {
		return syscall.ENOENT
	}
	if _, isDir := e.(*dir); isDir {
		return syscall.EISDIR
	}
	delete(n.d.cur, name)
	return 0
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	unlock, errno := n.lock()
	if errno != 0 {
		return errno
	}
	defer unlock()
	e, ok := n.d.cur[name]
	if !ok {
		return syscall.ENOENT
	}
	d, isDir := e.(*dir)
	if !isDir {
		return syscall.ENOTDIR
	}
	if len(d.cur) != 0 {
		return syscall.ENOTEMPTY
	}
	delete(n.d.cur, name)
	return 0
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	unlock, errno := n.lock()
	if errno != 0 {
		return errno
	}
	defer unlock()
	np, ok := newParent.(*node)
	if !ok || np.d == nil {
		return syscall.EXDEV
	}
	e, ok := n.d.cur[name]
	if !ok {
		return syscall.ENOENT
	}
	if flags != 0 {
		return syscall.EINVAL
	}
	if old, ok := np.d.cur[newName]; ok {
		if od, isDir := old.(*dir); isDir && len(od.cur) != 0 {
			return syscall.ENOTEMPTY
		}
	}
	delete(n.d.cur, name)
	np.d.cur[newName] = e
	return 0
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	unlock, errno := n.lock()
	if errno != 0 {
		return nil, errno
	}
	defer unlock()
	var ents []fuse.DirEntry
	for name, e := range n.d.cur {
		var a fuse.Attr
		fill(e, &a)
		ents = append(ents, fuse.DirEntry{Name: name, Mode: a.Mode, Ino: a.Ino})
	}
	return fs.NewListDirStream(ents), 0
}
