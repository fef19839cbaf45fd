package agent

import (
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/protocol/msg"
)

// inventory lists block devices and the disk image files under the
// configured scan directories.
func (a *Agent) inventory() []msg.InventoryItem {
	items := blockDevices()
	for _, dir := range a.cfg.ScanDirs {
		filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.IsDir() {
				if strings.HasPrefix(d.Name(), ".ferry") {
					return filepath.SkipDir
				}
				return nil
			}
			if !d.Type().IsRegular() || !disk.IsImageFile(d.Name()) {
				return nil
			}
			it := msg.InventoryItem{Path: path, Kind: "file"}
			info, err := disk.Probe(path)
			if err != nil {
				it.Note = err.Error()
			} else {
				it.Format, it.Size = string(info.Format), info.VirtualSize
			}
			items = append(items, it)
			return nil
		})
	}
	return items
}
