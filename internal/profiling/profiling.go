// Package profiling starts the profiles of the binaries' --cpu-profile
// flag (benchmarks explain misses with pprof). It is a leaf.
package profiling

import (
	"errors"
	"os"
	"runtime"
	"runtime/pprof"
)

// blockRate is the block profile's sampling rate: one event per 100 µs
// spent blocked, on average. Coarse enough to cost nothing measurable,
// fine enough to show where a pipeline waits.
const blockRate = 100_000

// Start writes a CPU profile to path until the returned stop is called,
// and at stop also the goroutine blocking profile to path + ".block": when
// fewer cores are busy than there are, the CPU profile cannot say what the
// idle ones waited for; the blocking profile can (channel, select, mutex,
// sync.Cond waits; not syscalls, which the CPU profile counts). An empty
// path does nothing.
func Start(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	runtime.SetBlockProfileRate(blockRate)
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		runtime.SetBlockProfileRate(0)
		_ = writeProfile("block", path+".block")
	}, nil
}

func writeProfile(name, path string) error {
	p := pprof.Lookup(name)
	if p == nil {
		return errors.New("no profile " + name)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	return errors.Join(p.WriteTo(f, 0), f.Close())
}
