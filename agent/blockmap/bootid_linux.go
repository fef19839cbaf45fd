package blockmap

import (
	"os"
	"strings"
)

// BootID identifies the current boot of the host, so a map can tell a
// process crash (page cache intact) from a reboot (unsynced writes lost).
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
