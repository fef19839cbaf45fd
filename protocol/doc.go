// Package protocol defines what travels between agents and the controller:
// the supported version range, stream kinds and error codes. Subpackages
// frame bytes, run sessions and encode messages (docs/protocol.md).
package protocol
