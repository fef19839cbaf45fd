package agent

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/agent/snapshot"
	"github.com/ferrydr/ferry/protocol/msg"
)

// trackable says whether the machine's disks can be tracked and frozen,
// and returns them with the mount points to freeze, or why not. The disks
// are either raw image files, all on one filesystem (trackableFiles), or
// whole block devices, each with a filesystem mounted from it
// (trackableDevices); none of the filesystems is the root or holds the
// agent's state or log, unless Config.FreezeOwnFS lists it (ownfs.go).
func (a *Agent) trackable(cfg msg.MachineConfig) (disks []*trackedDisk, mounts []string, why string) {
	disks, mounts, _, why = a.trackableWith(cfg, nil)
	return disks, mounts, why
}

// trackableWith is trackable for a machine with source driver drv (nil:
// none). A block device with no mounted filesystem is then tracked too
// when the driver can pause and resume the machine: pause says the
// freeze must also pause it (the machine stops writing, as a frozen
// filesystem does). Image files with a source driver keep the taker's
// views (a pause around a clone).
func (a *Agent) trackableWith(cfg msg.MachineConfig, drv snapshot.Driver) (disks []*trackedDisk, mounts []string, pause bool, why string) {
	if len(cfg.Disks) == 0 {
		return nil, nil, false, "the machine has no disks"
	}
	var st unix.Stat_t
	if err := unix.Stat(cfg.Disks[0].Path, &st); err != nil {
		return nil, nil, false, err.Error()
	}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		canPause := drv != nil && drv.Has("pause") && drv.Has("resume")
		return a.trackableDevices(cfg, canPause)
	}
	if drv != nil {
		return nil, nil, false, "the machine has a source driver: its image files' views are the taker's (pause and clone)"
	}
	disks, mounts, why = a.trackableFiles(cfg)
	return disks, mounts, false, why
}

// trackableFiles: raw image files, all on one filesystem.
func (a *Agent) trackableFiles(cfg msg.MachineConfig) (disks []*trackedDisk, mounts []string, why string) {
	var dev uint64
	for i, dc := range cfg.Disks {
		var st unix.Stat_t
		if err := unix.Stat(dc.Path, &st); err != nil {
			return nil, nil, err.Error()
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return nil, nil, dc.Path + " is not a regular file (a machine's tracked disks are all files or all block devices)"
		}
		if i > 0 && st.Dev != dev {
			return nil, nil, "the machine's disks are on more than one filesystem"
		}
		dev = st.Dev
		src, err := disk.Open(dc.Path, disk.OpenOptions{Format: disk.Format(dc.Format)})
		if err != nil {
			return nil, nil, err.Error()
		}
		format := src.Format()
		src.Close()
		if format != disk.FormatRaw {
			return nil, nil, fmt.Sprintf("%s is a %s image: only raw images are tracked", dc.Path, format)
		}
		disks = append(disks, trackedFile(dc.Path, st.Ino))
	}
	mount := mountOf(filepath.Dir(cfg.Disks[0].Path), dev)
	if mount == "/" && !a.ownFSListed(dev) {
		return nil, nil, "the disks are on the root filesystem, " + freezesOnlyListed("/")
	}
	if why := a.holdsOwnFiles(mount, dev); why != "" {
		return nil, nil, why
	}
	return disks, []string{mount}, ""
}

// trackableDevices: whole block devices (bdtrack refuses partitions),
// each with a filesystem mounted from it; they are all frozen at once.
func (a *Agent) trackableDevices(cfg msg.MachineConfig, canPause bool) (disks []*trackedDisk, mounts []string, pause bool, why string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, nil, false, err.Error()
	}
	defer f.Close()
	mi, err := parseMountinfo(f)
	if err != nil {
		return nil, nil, false, err.Error()
	}
	for _, dc := range cfg.Disks {
		var st unix.Stat_t
		if err := unix.Stat(dc.Path, &st); err != nil {
			return nil, nil, false, err.Error()
		}
		if st.Mode&unix.S_IFMT != unix.S_IFBLK {
			return nil, nil, false, dc.Path + " is not a block device (a machine's tracked disks are all files or all block devices)"
		}
		major, minor := unix.Major(st.Rdev), unix.Minor(st.Rdev)
		if _, err := os.Stat(fmt.Sprintf("/sys/dev/block/%d:%d/partition", major, minor)); err == nil {
			return nil, nil, false, dc.Path + " is a partition: block devices are tracked as whole disks (agent/bdtrack)"
		}
		if why := stackedDevice(sysBlock, major, minor); why != "" {
			return nil, nil, false, dc.Path + ": " + why
		}
		ms, why := a.diskMounts(mi, major, minor)
		switch {
		case why == noMountedAnywhere && canPause:
			pause = true // the source driver's pause stops its writers
		case why == noMountedAnywhere:
			return nil, nil, false, dc.Path + ": " + why + " (and no source driver to pause the machine)"
		case why != "":
			return nil, nil, false, dc.Path + ": " + why
		}
		disks = append(disks, a.trackedBlockDevice(dc.Path, dc.BlockSize, major, minor))
		mounts = append(mounts, ms...)
	}
	return disks, mounts, pause, ""
}

// diskMounts is where the filesystems of whole disk major:minor are
// frozen: the filesystem on the disk itself, or those on its partitions
// (a partitioned disk's tracker sees its partitions' writes: the block
// layer's events name the whole disk). A partition with no mounted
// filesystem (swap, an unused or raw partition) is not frozen: the
// capture then proves that nothing wrote to the disk while the others
// were frozen, or is not used (captureFrozen).
func (a *Agent) diskMounts(mi mountinfo, major, minor uint32) (mounts []string, why string) {
	parts, err := partitionsOf(major, minor)
	if err != nil {
		return nil, err.Error()
	}
	if len(parts) == 0 {
		dev := unix.Mkdev(major, minor)
		mount, why := mi.freezable(major, minor)
		if why == noMountedFS {
			return nil, noMountedAnywhere
		}
		if why != "" && !(mount == "/" && a.ownFSListed(dev)) {
			return nil, why
		}
		if why := a.holdsOwnFiles(mount, dev); why != "" {
			return nil, why
		}
		return []string{mount}, ""
	}
	for _, p := range parts {
		dev := unix.Mkdev(p.major, p.minor)
		mount, why := mi.freezable(p.major, p.minor)
		switch {
		case why == noMountedFS:
			continue
		case why != "" && !(mount == "/" && a.ownFSListed(dev)):
			return nil, "partition " + p.name + ": " + why
		}
		if why := a.holdsOwnFiles(mount, dev); why != "" {
			return nil, "partition " + p.name + ": " + why
		}
		mounts = append(mounts, mount)
	}
	if len(mounts) == 0 {
		return nil, noMountedAnywhere
	}
	return mounts, ""
}

// sysBlock is where sysfs lists block devices by number.
const sysBlock = "/sys/dev/block"

// stackedDevice says why device major:minor (under sysfs root) is not
// tracked when it is built on other devices: device-mapper (LVM,
// dm-crypt, multipath) or md (software RAID). Their writes reach the
// block layer twice, as the stacked device's requests and as its members',
// and which of those the tracepoints name on completion cannot be tested
// here (no device-mapper or md in this build's test machines): such a
// device is read directly, and its points say why, rather than tracked on
// an unproven assumption.
func stackedDevice(root string, major, minor uint32) string {
	dir := fmt.Sprintf("%s/%d:%d", root, major, minor)
	for _, kind := range []struct{ sub, name string }{{"dm", "device-mapper (LVM, dm-crypt)"}, {"md", "md (software RAID)"}} {
		if _, err := os.Stat(filepath.Join(dir, kind.sub)); err == nil {
			return "a " + kind.name + " device: stacked devices are not tracked (untested), its points are direct reads"
		}
	}
	if members, err := os.ReadDir(filepath.Join(dir, "slaves")); err == nil && len(members) > 0 {
		return fmt.Sprintf("a device stacked on %d others: stacked devices are not tracked, its points are direct reads", len(members))
	}
	return ""
}

// partition is one partition of a whole disk, from sysfs.
type partition struct {
	name         string
	major, minor uint32
}

// partitionsOf lists the partitions of whole disk major:minor: the
// subdirectories of its sysfs directory that hold a "partition" file.
func partitionsOf(major, minor uint32) ([]partition, error) {
	dir := fmt.Sprintf("/sys/dev/block/%d:%d", major, minor)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []partition
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "partition")); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "dev"))
		if err != nil {
			return nil, err
		}
		var maj, min uint32
		if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &maj, &min); err != nil {
			return nil, fmt.Errorf("%s/%s/dev: %q", dir, e.Name(), b)
		}
		out = append(out, partition{name: e.Name(), major: maj, minor: min})
	}
	return out, nil
}

// holdsOwnFiles says why the filesystem dev, mounted at mount, cannot be
// frozen when it holds the agent's state directory or log and the admin
// did not list it: every write the agent makes there would wait for the
// thaw.
func (a *Agent) holdsOwnFiles(mount string, dev uint64) string {
	if a.ownFSListed(dev) {
		return ""
	}
	var st unix.Stat_t
	if err := unix.Stat(a.cfg.StateDir, &st); err == nil && st.Dev == dev {
		return "the agent's state directory is on the disks' filesystem, " + freezesOnlyListed(mount)
	}
	if a.cfg.LogFile != "" {
		if err := unix.Stat(filepath.Dir(a.cfg.LogFile), &st); err == nil && st.Dev == dev {
			return "the agent's log is on the disks' filesystem, " + freezesOnlyListed(mount)
		}
	}
	return ""
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

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	major, minor uint32
	root         string // the directory of the filesystem mounted here
	point        string
	fstype       string
}

type mountinfo []mountEntry

// parseMountinfo reads proc(5)'s mountinfo format: ID, parent ID,
// major:minor, root, mount point, options, optional fields up to "-",
// filesystem type, source, super options. Paths escape space, tab,
// newline and backslash in octal.
func parseMountinfo(r io.Reader) (mountinfo, error) {
	var out mountinfo
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			return nil, fmt.Errorf("mountinfo: short line %q", sc.Text())
		}
		majS, minS, ok := strings.Cut(fields[2], ":")
		maj, err1 := strconv.ParseUint(majS, 10, 32)
		min, err2 := strconv.ParseUint(minS, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("mountinfo: device %q", fields[2])
		}
		e := mountEntry{major: uint32(maj), minor: uint32(min), root: unescapeMount(fields[3]), point: unescapeMount(fields[4])}
		for i := 6; i < len(fields)-1; i++ {
			if fields[i] == "-" {
				e.fstype = fields[i+1]
				break
			}
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 is a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// noMountedAnywhere is diskMounts' reason for a disk with no mounted
// filesystem, on it or on its partitions.
const noMountedAnywhere = "no mounted filesystem to freeze, on it or its partitions"

// noMountedFS is freezable's reason for a device nothing is mounted from.
const noMountedFS = "no mounted filesystem to freeze"

// freezable is the mount point through which the filesystem on device
// major:minor is frozen (a mount of its root directory if there is one;
// bind mounts of a subdirectory share its superblock), or why there is
// none: not mounted, or mounted as the root filesystem (then mount is
// "/": frozen all the same when Config.FreezeOwnFS lists it).
func (mi mountinfo) freezable(major, minor uint32) (mount, why string) {
	whole := false
	for _, e := range mi {
		if e.major != major || e.minor != minor {
			continue
		}
		if e.point == "/" {
			return "/", "it holds the root filesystem, " + freezesOnlyListed("/")
		}
		if mount == "" || (!whole && e.root == "/") {
			mount, whole = e.point, e.root == "/"
		}
	}
	if mount == "" {
		return "", noMountedFS
	}
	return mount, ""
}

// dropBlockTrackers unpins the write trackers of a machine's block
// devices and removes their saved state: a machine no longer replicated
// leaves no eBPF program marking its disks.
func (a *Agent) dropBlockTrackers(cfg msg.MachineConfig) {
	for _, dc := range cfg.Disks {
		var st unix.Stat_t
		if unix.Stat(dc.Path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
			continue
		}
		if err := bdtrack.RemovePinned(dc.Path, bdtrack.Options{}); err != nil {
			a.log.Warn("unpinning the write tracker of a machine no longer replicated failed", "machine", cfg.Name, "disk", dc.Path, "err", err)
		}
		os.Remove(filepath.Join(blockStateDir(a.cfg.StateDir), fmt.Sprintf("%d_%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))))
	}
}
