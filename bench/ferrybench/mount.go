package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// loopMount is a filesystem made on a sparse file, attached to a loop
// device and mounted: the XFS (reflink) and ext4 (no reflink) homes of the
// images.
type loopMount struct {
	File, Dev, Dir, FS string
}

// mkfsArgs are the mkfs invocations per filesystem type.
var mkfsArgs = map[string][]string{
	"xfs":  {"mkfs.xfs", "-q", "-f", "-m", "reflink=1"},
	"ext4": {"mkfs.ext4", "-q", "-F"},
}

// makeLoopMount creates file (sparse, size bytes), makes fs on a loop
// device over it (mkfs given mkfsExtra besides its usual arguments) and
// mounts it at dir.
func makeLoopMount(ctx context.Context, fs, file, dir string, size int64, mkfsExtra ...string) (m *loopMount, err error) {
	mk, ok := mkfsArgs[fs]
	if !ok {
		return nil, fmt.Errorf("no mkfs for %q", fs)
	}
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	out, err := command(ctx, "losetup", "-f", "--show", file)
	if err != nil {
		os.Remove(file)
		return nil, err
	}
	m = &loopMount{File: file, Dev: strings.TrimSpace(out), Dir: dir, FS: fs}
	defer func() {
		if err != nil {
			m.close(context.WithoutCancel(ctx))
		}
	}()
	if _, err = command(ctx, mk[0], append(append(slices.Clone(mk[1:]), mkfsExtra...), m.Dev)...); err != nil {
		return m, err
	}
	if err = os.MkdirAll(dir, 0o755); err != nil {
		return m, err
	}
	if _, err = command(ctx, "mount", m.Dev, dir); err != nil {
		return m, err
	}
	return m, nil
}

// close unmounts, detaches the loop device and deletes the backing file.
func (m *loopMount) close(ctx context.Context) error {
	var errs []error
	if mounted(m.Dir) {
		if _, err := command(ctx, "umount", m.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	if m.Dev != "" {
		if _, err := command(ctx, "losetup", "-d", m.Dev); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(m.File); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// mounted reports whether dir is a mount point (per /proc/self/mountinfo).
func mounted(dir string) bool {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 4 && unescapeMount(fs[4]) == abs {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes of space, tab, newline and
// backslash.
func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// cleanLeftovers unmounts and detaches what an interrupted earlier run of
// this program left under work (mounts at work/mnt/*, loop devices over
// work/*.img), so a new run starts clean.
func cleanLeftovers(ctx context.Context, work string) error {
	var errs []error
	dirs, _ := filepath.Glob(filepath.Join(work, "mnt", "*"))
	for _, d := range dirs {
		if mounted(d) {
			if _, err := command(ctx, "umount", d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	imgs, _ := filepath.Glob(filepath.Join(work, "*.img"))
	for _, img := range imgs {
		out, err := command(ctx, "losetup", "-j", img)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			dev, _, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			if _, err := command(ctx, "losetup", "-d", dev); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.Remove(img); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
