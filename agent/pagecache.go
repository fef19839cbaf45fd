package agent

import (
	"log/slog"

	"github.com/ferrydr/ferry/agent/disk"
	"github.com/ferrydr/ferry/agent/snapshot"
)

// notePageCacheReads says in the point's reason which disks were read
// through a block device's page cache because the device refused
// O_DIRECT (disk.PageCacheReads): their blocks may be stale. The first
// time for each device it also logs a warning.
func (a *Agent) notePageCacheReads(view *snapshot.View, disks []*cycleDisk, log *slog.Logger) {
	for _, d := range disks {
		if d == nil || d.src == nil {
			continue
		}
		for _, why := range disk.PageCacheReads(d.src) {
			view.Notes = append(view.Notes, "disk "+d.name+": "+why)
			if _, seen := a.pageCacheWarned.LoadOrStore(why, true); !seen {
				log.Warn("a block device is read through its page cache: its reads may be stale", "disk", d.name, "why", why)
			}
		}
	}
}
