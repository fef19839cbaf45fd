//go:build !linux

package bdtrack

// Tracker is not available on this platform.
type Tracker struct {
	Fresh       bool
	FreshReason error
}

// Open fails: block device tracking uses Linux eBPF.
func Open(dev string, blockSize int, opts Options) (*Tracker, error) {
	return nil, &Error{Op: "open", Dev: dev, Err: ErrUnsupported}
}

// Cut fails: see Open.
func (t *Tracker) Cut() (Dirty, error) { return Dirty{}, ErrUnsupported }

// Stats is empty here.
func (t *Tracker) Stats() (Stats, error) { return Stats{}, ErrUnsupported }

// Close does nothing here.
func (t *Tracker) Close() error { return nil }

// Remove fails: see Open.
func (t *Tracker) Remove() error { return ErrUnsupported }

// RemovePinned fails: see Open.
func RemovePinned(dev string, opts Options) error { return ErrUnsupported }

// MarkOverflow fails: see Open.
func MarkOverflow(dev string, opts Options) error { return ErrUnsupported }
