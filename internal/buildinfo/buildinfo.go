// Package buildinfo holds the software version stamped in at link time.
// It is a leaf: it imports nothing of ours, so every package may use it.
package buildinfo

// Version is set with -ldflags "-X github.com/ferrydr/ferry/internal/buildinfo.Version=…".
var Version = "dev"
