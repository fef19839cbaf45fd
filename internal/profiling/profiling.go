// Package profiling starts a CPU profile for the binaries' --cpu-profile
// flag (benchmarks explain misses with pprof). It is a leaf.
package profiling

import (
	"os"
	"runtime/pprof"
)

// Start writes a CPU profile to path until the returned stop is called.
// An empty path does nothing.
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
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
