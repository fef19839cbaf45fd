// Package data encodes the binary frames of replication streams (kinds
// data, restore and hashes): cycle manifests, the controller's need
// bitmaps, block batches, barriers, acknowledgements, the end of a cycle,
// per-batch errors and hash runs for a resync; plus the patch encoding of
// partly changed blocks and a zstd codec without global state.
//
// All integers are big-endian, like the frame header and yamux. Every
// length and count is checked against the limits in limits.go before
// anything is allocated; decoders are strict (unknown flags, trailing
// bytes and non-canonical encodings are errors), so each value has exactly
// one encoding. docs/protocol.md gives the byte layouts.
package data
