package snapshot

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// A quiet-file view is the live image files, read directly, that nobody
// wrote from before the cycle's first read to after its last: what was
// read is then each file as it stood at every instant of that window, and
// one instant for all of a machine's disks, since all are stamped before
// the first read and again after the last. A write in flight when the
// window opens may be seen in part, as a disk that loses power may keep
// part of a write it had not acknowledged; every later write changes a
// stamp.
//
// A file's stamp is its identity (device and inode), its size and its
// modification and change times. The kernel keeps no change counter that
// userspace can read (statx's STATX_CHANGE_COOKIE is kernel-internal up
// to at least Linux 6.18), so the times must tell two writes apart. They
// do only where the filesystem gives fine-grained ("multigrain")
// timestamps: since Linux 6.13 ext4, XFS, btrfs and tmpfs stamp the first
// write after a file's times were read with a fresh fine-grained time,
// while a filesystem without them (ramfs, older kernels) may give two
// writes in one clock tick — a few milliseconds — the same time, and a
// write just after the first stamp would go unseen. Each filesystem is
// therefore tried once, on first use, with a test file next to the image:
// write, stamp, write again at once, stamp. If the second write leaves a
// time unchanged, no file of that filesystem is ever claimed quiet.

// fileStamp is what changes when a file is written.
type fileStamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime time.Time
}

// changes says how b, a later stamp of the same path, differs from a
// ("" when it does not).
func (a fileStamp) changes(b fileStamp) string {
	var what []string
	if a.dev != b.dev || a.ino != b.ino {
		what = append(what, "it was replaced by another file")
	}
	if a.size != b.size {
		what = append(what, fmt.Sprintf("its size went from %d to %d bytes", a.size, b.size))
	}
	if !a.mtime.Equal(b.mtime) {
		what = append(what, fmt.Sprintf("its modification time moved by %s", b.mtime.Sub(a.mtime)))
	}
	if !a.ctime.Equal(b.ctime) {
		what = append(what, fmt.Sprintf("its change time moved by %s", b.ctime.Sub(a.ctime)))
	}
	return strings.Join(what, ", ")
}

// fsKey names one mounted filesystem: its device and its mount.
type fsKey struct{ dev, mount uint64 }

// timestampCheck is what a filesystem's experiment found.
type timestampCheck struct {
	fine   bool
	detail string // when not fine: what the experiment saw
}

// timestampChecks remembers each filesystem's experiment; the zero value
// is empty.
type timestampChecks struct {
	mu sync.Mutex
	m  map[fsKey]timestampCheck
}

// coarseWhy is the reason a filesystem's files are never claimed quiet.
func coarseWhy(detail string) string {
	return "timestamps on this filesystem are coarser than the writes (" + detail + "), so a quiet file cannot be told from a written one"
}

// fineTimestamps checks, once per filesystem, that the filesystem holding
// the image at path tells two writes in one clock tick apart; "" when it
// does, else why no file there can be claimed quiet.
func (t *Taker) fineTimestamps(path string, key fsKey) string {
	c := &t.stamps
	c.mu.Lock()
	defer c.mu.Unlock()
	if r, ok := c.m[key]; ok {
		if r.fine {
			return ""
		}
		return coarseWhy(r.detail)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "the granularity of this filesystem's timestamps could not be checked: " + err.Error()
	}
	dir := filepath.Dir(real)
	fine, detail, err := probeTimestamps(dir, key)
	if err != nil {
		// Not remembered: the next cycle tries again.
		return "the granularity of this filesystem's timestamps could not be checked: " + err.Error()
	}
	if c.m == nil {
		c.m = map[fsKey]timestampCheck{}
	}
	c.m[key] = timestampCheck{fine: fine, detail: detail}
	t.logger().Info("checked the filesystem's timestamps for quiet-file views", "dir", dir, "fs", FSType(dir), "fine_grained", fine, "detail", detail)
	if fine {
		return ""
	}
	return coarseWhy(detail)
}

// quietStamps stamps every disk of the request for a quiet-file view. It
// returns the stamps, or why no quiet-file view can be made.
func (t *Taker) quietStamps(r Request) ([]fileStamp, string) {
	for _, d := range r.Disks {
		_, key, err := stampFile(d.Path)
		if err != nil {
			return nil, err.Error()
		}
		if why := t.fineTimestamps(d.Path, key); why != "" {
			return nil, why
		}
	}
	// All of them after every check: the window opens here, for all.
	stamps := make([]fileStamp, len(r.Disks))
	for i, d := range r.Disks {
		st, _, err := stampFile(d.Path)
		if err != nil {
			return nil, err.Error()
		}
		stamps[i] = st
	}
	return stamps, ""
}

// checkQuiet stamps the disks again after the cycle's last read and turns
// the view into a direct, inconsistent read when one of them changed.
// directWhy is what a direct read says of the machine.
func checkQuiet(v *View, r Request, before []fileStamp, directWhy string) {
	var changed []string
	for i, d := range r.Disks {
		after, _, err := stampFile(d.Path)
		what := ""
		if err != nil {
			what = "it cannot be stamped again: " + err.Error()
		} else {
			what = before[i].changes(after)
		}
		if what != "" {
			changed = append(changed, "disk "+d.Name+": "+what)
		}
	}
	if len(changed) == 0 {
		return
	}
	v.Method, v.Consistency = MethodDirect, Inconsistent
	v.Why = "the image was written while it was read (" + strings.Join(changed, "; ") + "); " + directWhy
}
