package bdtrack

import (
	"fmt"
	"path/filepath"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// pinDirOf is where the tracker of dev is pinned.
func pinDirOf(dev string, opts Options) (string, error) {
	if opts.BPFFS == "" {
		opts.BPFFS = "/sys/fs/bpf"
	}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return "", err
	}
	return filepath.Join(opts.BPFFS, "ferry", fmt.Sprintf("%d_%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))), nil
}

// MarkOverflow counts one overflow in the pinned tracker of dev, from
// outside the process that cuts it, exactly as the program does for a
// request too large to mark (an atomic add to the shared counter): the
// next Cut reports Overflow and its caller must resync. Fault tests use
// it to lose tracking in a running agent; no real request on a small
// device is large enough (MaxWordsPerEvent words of blocks).
func MarkOverflow(dev string, opts Options) error {
	dir, err := pinDirOf(dev, opts)
	if err != nil {
		return &Error{Op: "mark overflow", Dev: dev, Err: err}
	}
	ctl, err := ebpf.LoadPinnedMap(filepath.Join(dir, "ctl"), nil)
	if err != nil {
		return &Error{Op: "mark overflow", Dev: dev, Err: err}
	}
	defer ctl.Close()
	if ctl.ValueSize() != ctlValueSize {
		return &Error{Op: "mark overflow", Dev: dev, Err: fmt.Errorf("ctl value of %d bytes, want %d: %w", ctl.ValueSize(), ctlValueSize, ErrMismatch)}
	}
	// The value is written through the map's memory, not with an update
	// of the whole value, which would race with the program's counters
	// and with Cut's flip of the active half.
	mem, err := unix.Mmap(ctl.FD(), 0, pageRound(ctlValueSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return &Error{Op: "mark overflow", Dev: dev, Err: fmt.Errorf("mmap ctl: %w", err)}
	}
	defer unix.Munmap(mem)
	atomic.AddUint64(word(mem, ctlOverflows/8), 1)
	return nil
}
