// Package frame reads and writes the length-prefixed frames that every
// Ferry stream carries after its kind byte:
//
//	[u32 big-endian length of type+payload][u8 type][payload]
//
// with a hard limit on the length, checked before anything is allocated.
// Type 0 is reserved in every stream kind for the error frame, which
// carries a protocol.Error as JSON and ends the stream.
package frame
