//go:build !linux

package snapshot

import (
	"fmt"
	"os"
)

// Clone is not available on this platform yet (ReFS block cloning later).
func Clone(src, dst string) error { return fmt.Errorf("reflink: %w", ErrNotSupported) }

// Extents is not available on this platform.
func Extents(path string) ([]PhysExtent, error) {
	return nil, fmt.Errorf("fiemap: %w", ErrNotSupported)
}

// Freeze is not available on this platform (VSS later).
func Freeze(mount string) error { return fmt.Errorf("freeze: %w", ErrNotSupported) }

// Thaw is not available on this platform.
func Thaw(mount string) error { return fmt.Errorf("thaw: %w", ErrNotSupported) }

// SubvolumeRoot is btrfs-only.
func SubvolumeRoot(path string) (string, error) { return "", fmt.Errorf("btrfs: %w", ErrNotSupported) }

// SnapshotSubvolume is btrfs-only.
func SnapshotSubvolume(src, destDir, name string) error {
	return fmt.Errorf("btrfs: %w", ErrNotSupported)
}

// DeleteSubvolume is btrfs-only.
func DeleteSubvolume(destDir, name string) error { return fmt.Errorf("btrfs: %w", ErrNotSupported) }

// Flag values exist on every platform so diff code compiles.
const (
	FlagUnknown   = 0x2
	FlagDelalloc  = 0x4
	FlagEncoded   = 0x8
	FlagInline    = 0x200
	FlagTail      = 0x400
	FlagUnwritten = 0x800
	FlagShared    = 0x2000
)

// FreezeFile is not supported here.
func FreezeFile(dir *os.File) error { return fmt.Errorf("freeze: %w", ErrNotSupported) }

// ThawFile is not supported here.
func ThawFile(dir *os.File) error { return fmt.Errorf("thaw: %w", ErrNotSupported) }

// FSType names the filesystem holding path: not known on this platform.
func FSType(path string) string { return "" }
