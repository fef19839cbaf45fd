// Package blockmap is the agent's crash-safe map of what the controller has
// acknowledged: one 128-bit xxh3 hash per block of each protected disk. A
// cycle compares a view's blocks with it to find what changed, and advances
// it only for blocks the controller acknowledged as durable.
package blockmap
