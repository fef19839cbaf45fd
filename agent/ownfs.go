package agent

import (
	"fmt"
	"path/filepath"
)

// FreezeOwnFSFlag is the `ferry-agent run` option (config key
// freeze_own_fs) by which the admin lets tracked freezes stop the root
// filesystem or one holding the agent's state or log; the refusals name
// it as the way out.
const FreezeOwnFSFlag = "--freeze-own-fs"

// freezesOnlyListed ends the refusal of a filesystem the agent freezes
// only when the admin listed it.
func freezesOnlyListed(mount string) string {
	return fmt.Sprintf("which the agent freezes only when %s lists its mount point (%s)", FreezeOwnFSFlag, mount)
}

// checkFreezeOwnFS cleans Config.FreezeOwnFS and refuses what cannot be a
// mount point.
func checkFreezeOwnFS(mounts []string) ([]string, error) {
	out := make([]string, 0, len(mounts))
	for _, m := range mounts {
		if !filepath.IsAbs(m) {
			return nil, fmt.Errorf("%s %q: want the absolute path of a mount point", FreezeOwnFSFlag, m)
		}
		out = append(out, filepath.Clean(m))
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}
