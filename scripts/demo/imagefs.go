package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ferrydr/ferry/agent/snapshot"
)

// imageFS is where the demo keeps its disk image: a directory on a
// filesystem whose views of a running machine are crash-consistent.
type imageFS struct {
	dir  string // the directory for the image
	kind string // what it is, for the demo's output
	// For a loop-mounted filesystem: its mount point and loop device.
	mnt, dev string
}

// makeImageFS makes the image's directory: with imageDir, a new directory
// under it; otherwise a sparse file in dir (the demo's temporary
// directory) holding an XFS filesystem, loop-mounted under dir. Either
// must make reflink clones, or the demo's points of its running machine
// would be inconsistent.
func makeImageFS(dir, imageDir string, size int64) (*imageFS, error) {
	fs := &imageFS{}
	if imageDir != "" {
		d, err := os.MkdirTemp(imageDir, "ferry-demo-")
		if err != nil {
			return nil, err
		}
		fs.dir, fs.kind = d, snapshot.FSType(d)
	} else if err := fs.mountXFS(dir, size); err != nil {
		fs.remove()
		return nil, err
	}
	if err := reflinks(fs.dir); err != nil {
		fs.remove()
		return nil, fmt.Errorf("the disk image's directory %s (%s) makes no reflink clone, so points of the running machine would be inconsistent: %w (use -image-dir on XFS or btrfs)", fs.dir, fs.kind, err)
	}
	return fs, nil
}

// mountXFS makes and mounts the XFS filesystem (root only).
func (fs *imageFS) mountXFS(dir string, size int64) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo keeps its disk image on an XFS filesystem it loop-mounts, which needs root: run it as root (sudo make demo), or name a directory on XFS or btrfs with -image-dir")
	}
	for _, tool := range []string{"losetup", "mkfs.xfs", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is missing (install util-linux and xfsprogs, or use -image-dir on XFS or btrfs): %w", tool, err)
		}
	}
	backing := filepath.Join(dir, "xfs.img")
	f, err := os.Create(backing)
	if err != nil {
		return err
	}
	// Sparse: room for the image, its clones' copies on write and the
	// XFS minimum (300 MB).
	err = f.Truncate(max(512<<20, 3*size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	out, err := command("losetup", "-f", "--show", backing)
	if err != nil {
		return err
	}
	fs.dev = strings.TrimSpace(out)
	if _, err := command("mkfs.xfs", "-q", "-f", "-m", "reflink=1", fs.dev); err != nil {
		return err
	}
	fs.mnt = filepath.Join(dir, "xfs")
	if err := os.Mkdir(fs.mnt, 0o755); err != nil {
		return err
	}
	if _, err := command("mount", fs.dev, fs.mnt); err != nil {
		fs.mnt = ""
		return err
	}
	fs.dir, fs.kind = fs.mnt, "xfs on "+fs.dev
	return nil
}

// reflinks checks that dir's filesystem makes reflink clones.
func reflinks(dir string) error {
	src := filepath.Join(dir, ".reflink-test")
	if err := os.WriteFile(src, []byte("ferry demo"), 0o600); err != nil {
		return err
	}
	defer os.Remove(src)
	defer os.Remove(src + ".clone")
	return snapshot.Clone(src, src+".clone")
}

// remove unmounts and detaches a loop-mounted filesystem, or deletes the
// directory made under -image-dir.
func (fs *imageFS) remove() error {
	var errs []error
	if fs.mnt != "" {
		if _, err := command("umount", fs.mnt); err != nil {
			// Still busy: detach it now, the kernel drops it when idle
			// (and the loop device with it).
			if _, lerr := command("umount", "-l", fs.mnt); lerr != nil {
				errs = append(errs, err)
			}
		}
	} else if fs.dir != "" {
		errs = append(errs, os.RemoveAll(fs.dir))
	}
	if fs.dev != "" {
		if _, err := command("losetup", "-d", fs.dev); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// kept says how to remove what -keep left.
func (fs *imageFS) kept() string {
	if fs.mnt == "" {
		return "kept " + fs.dir
	}
	return fmt.Sprintf("kept the XFS filesystem mounted at %s (remove it with: umount %s && losetup -d %s)", fs.mnt, fs.mnt, fs.dev)
}

func command(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
