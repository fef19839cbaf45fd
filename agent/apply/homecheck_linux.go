package apply

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// runsOn returns the first of self (paths this agent runs from) whose
// filesystem is on the block device p — the device itself or one of its
// partitions — or "" when none is (or p is not a block device: an image
// file is never the disk the agent's own system runs from).
func runsOn(p string, self []string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return "", err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", nil
	}
	dev := uint64(st.Rdev)
	for _, s := range self {
		var ss unix.Stat_t
		if err := unix.Stat(s, &ss); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return "", err
		}
		on := uint64(ss.Dev)
		if on == dev {
			return s, nil
		}
		if parent, ok := wholeDisk(on); ok && parent == dev {
			return s, nil
		}
	}
	return "", nil
}

// wholeDisk returns the device number of the disk a partition belongs to
// (sysfs: /sys/dev/block/MAJ:MIN is the partition's directory inside its
// disk's, and has a "partition" file).
func wholeDisk(dev uint64) (uint64, bool) {
	dir := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(dev), unix.Minor(dev))
	if _, err := os.Stat(filepath.Join(dir, "partition")); err != nil {
		return 0, false
	}
	resolved, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return 0, false
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(resolved), "dev"))
	if err != nil {
		return 0, false
	}
	var maj, min uint32
	if _, err := fmt.Sscanf(string(b), "%d:%d", &maj, &min); err != nil {
		return 0, false
	}
	return unix.Mkdev(maj, min), true
}
