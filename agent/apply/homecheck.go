package apply

import (
	"context"
	"fmt"
	"os"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/protocol/msg"
)

// CheckHome reports whether Adopt could take these home disks, without
// writing anything, opening them for writing or taking their locks (the
// machine may still run on them: re-protect checks this before it stops
// anything). A disk is refused (ErrRefused, with the reason and the
// alternatives) when its format cannot be written in place (VMDK, VHD),
// when it is the disk this agent itself runs from (a physical or in-guest
// source: overwriting it would overwrite the running system), or when it
// does not have its point's size.
func (s *Site) CheckHome(ctx context.Context, disks []msg.TargetDisk, paths []string) error {
	if len(paths) != len(disks) {
		return invalidf("check of the home disks: %d paths for %d disks", len(paths), len(disks))
	}
	for i, p := range paths {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := checkHomeFormat(p, disks[i], selfPaths()); err != nil {
			return err
		}
	}
	return nil
}

// checkHomeFormat is CheckHome for one disk; self are the paths this
// agent runs from.
func checkHomeFormat(p string, d msg.TargetDisk, self []string) error {
	if on, err := runsOn(p, self); err != nil {
		return pathErr("check", p, err)
	} else if on != "" {
		return pathErr("check", p, fmt.Errorf("%w: disk %s: this agent runs from it (%s is on it): writing it in place would overwrite the running system; "+
			"reprotect with --target to a new disk (a full copy into it), or protect the machine again for a full copy", ErrRefused, d.Name, on))
	}
	if err := disk.CheckInPlace(p, disk.Format(d.Format)); err != nil {
		return pathErr("check", p, fmt.Errorf("%w: disk %s: %w", ErrRefused, d.Name, err))
	}
	size, err := homeSize(p, disk.Format(d.Format))
	if err != nil {
		return pathErr("check", p, err)
	}
	if size != d.Size {
		return pathErr("check", p, fmt.Errorf("%w: disk %s has %d bytes where the point has %d", ErrRefused, d.Name, size, d.Size))
	}
	return nil
}

// selfPaths are the files this agent runs from: its executable and the
// root filesystem.
func selfPaths() []string {
	out := []string{"/"}
	if exe, err := os.Executable(); err == nil {
		out = append(out, exe)
	}
	return out
}

// homeSize is a home disk's virtual size, read in its recorded format
// (forced; "" detects it).
func homeSize(p string, format disk.Format) (int64, error) {
	if format == "" {
		info, err := disk.Probe(p)
		return info.VirtualSize, err
	}
	src, err := disk.Open(p, disk.OpenOptions{Format: format})
	if err != nil {
		return 0, err
	}
	defer src.Close()
	return src.Size(), nil
}
