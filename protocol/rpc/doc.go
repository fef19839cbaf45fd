// Package rpc makes request/response calls over session streams, one
// stream per call: the caller opens a stream (kind control, or enrol
// before it has a certificate), sends one Request frame, and reads one
// Response frame. Errors travel as {code, message} and come back as
// *protocol.Error, so errors.Is works with the protocol sentinels.
// Cancelling the caller's context resets the stream, which cancels the
// handler's context on the other side.
package rpc
