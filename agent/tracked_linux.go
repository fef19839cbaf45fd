package agent

import (
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/protocol/msg"
)

// trackable says whether the machine's disks can be tracked and frozen:
// raw image files, all on one filesystem, which is not the root and does
// not hold the agent's state. It returns the disks and the mount point, or
// why not.
func (a *Agent) trackable(cfg msg.MachineConfig) (disks []*trackedDisk, mount, why string) {
	var dev uint64
	for i, dc := range cfg.Disks {
		var st unix.Stat_t
		if err := unix.Stat(dc.Path, &st); err != nil {
			return nil, "", err.Error()
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil, "", dc.Path + " is not a regular file"
		}
		if i > 0 && st.Dev != dev {
			return nil, "", "the machine's disks are on more than one filesystem"
		}
		dev = st.Dev
		src, err := disk.Open(dc.Path, disk.OpenOptions{Format: disk.Format(dc.Format)})
		if err != nil {
			return nil, "", err.Error()
		}
		format := src.Format()
		src.Close()
		if format != disk.FormatRaw {
			return nil, "", fmt.Sprintf("%s is a %s image: only raw images are tracked", dc.Path, format)
		}
		disks = append(disks, &trackedDisk{path: dc.Path, ino: st.Ino})
	}
	mount = mountOf(filepath.Dir(cfg.Disks[0].Path), dev)
	if mount == "/" {
		return nil, "", "the disks are on the root filesystem, which the agent does not freeze"
	}
	var st unix.Stat_t
	if err := unix.Stat(a.cfg.StateDir, &st); err == nil && st.Dev == dev {
		return nil, "", "the agent's state directory is on the disks' filesystem, which a freeze would stop"
	}
	return disks, mount, ""
}

// mountOf is the mount point of the filesystem dev that holds dir: the
// highest ancestor on the same device.
func mountOf(dir string, dev uint64) string {
	dir, _ = filepath.Abs(dir)
	for {
		parent := filepath.Dir(dir)
		var st unix.Stat_t
		if parent == dir || unix.Stat(parent, &st) != nil || st.Dev != dev {
			return dir
		}
		dir = parent
	}
}
