package apply

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Disk set names (protocol/msg target.go).
const (
	SetStaged     = "staged" // the replica brought forward as points arrive
	SetLive       = "live"   // the failed-over machine's disks
	TestSetPrefix = "test-"  // a test failover's clones: "test-<job>"
	// SetHome is the home site's own disks as a replica (reverse
	// replication): its state names the disk files where they are.
	SetHome = "home"
)

// MaxNameLen bounds machine, set and disk names: they become path
// elements, and every filesystem takes 255 bytes.
const MaxNameLen = 128

// Files inside a disk set directory.
const (
	StateFile = "state.json"
	diskExt   = ".raw"
)

// ValidName reports whether s may name a machine, a disk or a test job:
// 1 to MaxNameLen letters, digits, '.', '_' and '-', not starting with '.'
// (names starting with a dot are this package's own temporary entries, and
// "." and ".." are not names).
func ValidName(s string) bool {
	if s == "" || len(s) > MaxNameLen || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// ValidSetName reports whether s names a disk set: "staged", "live" or
// "test-<job>".
func ValidSetName(s string) bool {
	if s == SetStaged || s == SetLive || s == SetHome {
		return true
	}
	job, ok := strings.CutPrefix(s, TestSetPrefix)
	return ok && ValidName(job) && len(s) <= MaxNameLen
}

// IsTestSet reports whether s names a test failover's set.
func IsTestSet(s string) bool { return ValidSetName(s) && strings.HasPrefix(s, TestSetPrefix) }

// MachineDir checks dir (absolute) and machine and returns DIR/M.
func MachineDir(dir, machine string) (string, error) {
	if dir == "" || !filepath.IsAbs(dir) {
		return "", invalidf("target directory %q is not an absolute path", dir)
	}
	if !ValidName(machine) {
		return "", invalidf("machine name %q: want 1 to %d letters, digits, '.', '_' or '-', not starting with '.'", machine, MaxNameLen)
	}
	return filepath.Join(filepath.Clean(dir), machine), nil
}

// SetDir checks its arguments and returns DIR/M/<set>.
func SetDir(dir, machine, set string) (string, error) {
	m, err := MachineDir(dir, machine)
	if err != nil {
		return "", err
	}
	if !ValidSetName(set) {
		return "", invalidf("disk set name %q: want %q, %q, %q or %q followed by a name", set, SetStaged, SetLive, SetHome, TestSetPrefix)
	}
	return filepath.Join(m, set), nil
}

// DiskPath is the raw file of disk name in the set directory setDir.
func DiskPath(setDir, name string) string { return filepath.Join(setDir, name+diskExt) }

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}
