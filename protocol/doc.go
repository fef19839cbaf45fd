// Package protocol defines what travels between agents and the controller
// before and beside the payload: the supported version range and its
// negotiation, the banner and verdict that precede yamux, the stream kinds
// and the error codes that carry errors across the wire.
//
// Subpackages frame bytes (frame), run sessions (session), make
// request/response calls (rpc) and encode replication data (data).
// docs/protocol.md specifies every byte.
package protocol
