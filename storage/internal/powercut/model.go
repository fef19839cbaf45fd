package powercut

import (
	"sort"
	"sync"
	"sync/atomic"
)

// state is shared by every node of one mounted filesystem.
type state struct {
	mu    sync.Mutex
	dead  bool
	ino   atomic.Uint64
	stats Stats
}

// Stats count what the filesystem saw (for tests that assert on the
// syscalls the code under test made).
type Stats struct {
	FileSyncs, DirSyncs, Writes int64
	Names                       map[string]bool // every name ever created
}

// file is one regular file's data: cur is what reads see, dur what a cut
// keeps.
type file struct {
	ino      uint64
	cur, dur []byte
	durSet   bool
}

// dir is a directory's entries: cur is what lookups see, dur what a cut
// keeps.
type dir struct {
	ino      uint64
	cur, dur map[string]any // *file or *dir
}

func newDir(ino uint64) *dir { return &dir{ino: ino, cur: map[string]any{}, dur: map[string]any{}} }

// Image is a durable filesystem state: the result of a cut.
type Image struct{ root *dir }

// snapshot copies the durable state reachable from d.
func snapshot(d *dir, next func() uint64) *dir {
	out := newDir(next())
	for name, e := range d.dur {
		switch v := e.(type) {
		case *file:
			f := &file{ino: next()}
			if v.durSet {
				f.cur = append([]byte(nil), v.dur...)
				f.dur = append([]byte(nil), v.dur...)
				f.durSet = true
			}
			out.cur[name], out.dur[name] = f, f
		case *dir:
			s := snapshot(v, next)
			out.cur[name], out.dur[name] = s, s
		}
	}
	return out
}

// Names lists the image's paths (for debugging failed tests).
func (im *Image) Names() []string {
	var out []string
	var walk func(prefix string, d *dir)
	walk = func(prefix string, d *dir) {
		for n, e := range d.cur {
			out = append(out, prefix+n)
			if sd, ok := e.(*dir); ok {
				walk(prefix+n+"/", sd)
			}
		}
	}
	walk("", im.root)
	sort.Strings(out)
	return out
}
