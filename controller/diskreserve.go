package controller

import (
	"errors"
	"io"
	"sync"
	"time"

	"github.com/ferrydr/ferry/controller/api"
	"github.com/ferrydr/ferry/protocol"
)

// The free-space reserve of the data directory (docs/limits.md): ingest
// pauses while less than the reserve is free, so that the catalog (admin
// writes, job records) and retention still have room.
const (
	// DefaultReserveMax and DefaultReservePercent make the default
	// reserve: the smaller of 1 GiB and 5 % of the filesystem.
	DefaultReserveMax     = 1 << 30
	DefaultReservePercent = 5
	// DiskFullReason is the health reason of every replicating machine
	// while ingest is paused.
	DiskFullReason = "controller disk nearly full"
	// reserveRecheckBytes and reserveRecheckEvery bound how much a data
	// stream reads, and how long, between two looks at the free space.
	reserveRecheckBytes = 4 << 20
	reserveRecheckEvery = time.Second
)

// ErrDiskFull is the refusal of replication while the reserve is reached.
// It travels to agents with code unavailable (retryable).
var ErrDiskFull = errors.New(DiskFullReason)

// DiskFullError says how much is free and what the reserve is. It matches
// ErrDiskFull and protocol.ErrUnavailable.
type DiskFullError struct {
	Dir           string
	Free, Reserve int64
}

func (e *DiskFullError) Error() string {
	return DiskFullReason + ": " + api.FormatSize(e.Free) + " free in " + e.Dir + ", reserve " + api.FormatSize(e.Reserve) + "; replication resumes once space is freed"
}

func (e *DiskFullError) Unwrap() []error { return []error{ErrDiskFull, protocol.ErrUnavailable} }

// diskGuard watches the free space of the data directory.
type diskGuard struct {
	dir     string
	reserve int64 // bytes; 0 disables the guard
	free    func(dir string) (avail, total int64, err error)

	mu      sync.Mutex
	checked time.Time
	err     error // the last verdict
}

// newDiskGuard sets the reserve: reserve bytes when ≥ 0, else the default
// for the filesystem of dir.
func newDiskGuard(dir string, reserve int64) (*diskGuard, error) {
	g := &diskGuard{dir: dir, reserve: reserve, free: freeSpace}
	if reserve < 0 {
		_, total, err := g.free(dir)
		if errors.Is(err, errors.ErrUnsupported) {
			g.reserve = 0
			return g, nil
		}
		if err != nil {
			return nil, err
		}
		g.reserve = min(DefaultReserveMax, total*DefaultReservePercent/100)
	}
	return g, nil
}

// check looks at the free space (at most once per reserveRecheckEvery
// unless force) and returns a *DiskFullError below the reserve.
func (g *diskGuard) check(force bool) error {
	if g == nil || g.reserve == 0 {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !force && time.Since(g.checked) < reserveRecheckEvery {
		return g.err
	}
	avail, _, err := g.free(g.dir)
	g.checked = time.Now()
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		g.err = nil
	case err != nil:
		g.err = nil // unknown: do not stop replication on a failed statfs
	case avail < g.reserve:
		g.err = &DiskFullError{Dir: g.dir, Free: avail, Reserve: g.reserve}
	default:
		g.err = nil
	}
	return g.err
}

// reader wraps a data stream: its reads fail with the guard's error once
// the free space is below the reserve, looked at every
// reserveRecheckBytes read or reserveRecheckEvery.
func (g *diskGuard) reader(rw io.ReadWriter) io.ReadWriter {
	if g == nil || g.reserve == 0 {
		return rw
	}
	return &guardedStream{ReadWriter: rw, g: g}
}

type guardedStream struct {
	io.ReadWriter
	g     *diskGuard
	since int64
}

func (s *guardedStream) Read(p []byte) (int, error) {
	if s.since >= reserveRecheckBytes {
		s.since = 0
		if err := s.g.check(true); err != nil {
			return 0, err
		}
	} else if err := s.g.check(false); err != nil {
		return 0, err
	}
	n, err := s.ReadWriter.Read(p)
	s.since += int64(n)
	return n, err
}
