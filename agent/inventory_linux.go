package agent

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ferrydr/ferry/protocol/msg"
)

// blockDevices reads /sys/block: whole disks with their size and the mount
// points of their partitions (from /proc/self/mounts).
func blockDevices() []msg.InventoryItem {
	mounts := map[string][]string{}
	if f, err := os.Open("/proc/self/mounts"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) >= 2 && strings.HasPrefix(fs[0], "/dev/") {
				mounts[filepath.Base(fs[0])] = append(mounts[filepath.Base(fs[0])], fs[1])
			}
		}
		f.Close()
	}
	entries, _ := os.ReadDir("/sys/block")
	var out []msg.InventoryItem
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "zram") {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/sys/block", name, "size"))
		if err != nil {
			continue
		}
		sectors, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if sectors == 0 {
			continue // an unused loop device
		}
		it := msg.InventoryItem{Path: "/dev/" + name, Kind: "block", Format: "raw", Size: sectors * 512}
		it.Mountpoints = append(it.Mountpoints, mounts[name]...)
		parts, _ := filepath.Glob(filepath.Join("/sys/block", name, name+"*"))
		for _, p := range parts {
			it.Mountpoints = append(it.Mountpoints, mounts[filepath.Base(p)]...)
		}
		if ro, _ := os.ReadFile(filepath.Join("/sys/block", name, "ro")); strings.TrimSpace(string(ro)) == "1" {
			it.Note = "read-only"
		}
		out = append(out, it)
	}
	return out
}
