package agent

import (
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ownFSListed says whether Config.FreezeOwnFS lists a mount point of the
// filesystem dev: a listed path counts only while it is the top of a
// mount of that filesystem, so that a listed mount point that is not
// mounted (a bare directory on the root filesystem) lets nothing else be
// frozen.
func (a *Agent) ownFSListed(dev uint64) bool {
	for _, m := range a.cfg.FreezeOwnFS {
		var st unix.Stat_t
		if unix.Stat(m, &st) != nil || st.Dev != dev {
			continue
		}
		if top, err := filepath.Abs(m); err == nil && mountOf(m, dev) == top {
			return true
		}
	}
	return false
}
