// Package ship sends one replication cycle: it reads the candidate blocks of
// a view, keeps those whose hash differs from the block map, and ships them
// as manifest parts and zstd-compressed batches over data streams —
// read, hash, compress and send overlapping on every core — advancing the
// block map only for blocks the controller acknowledged as durable.
package ship
