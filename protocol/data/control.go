package data

import (
	"fmt"
	"unicode/utf8"

	"github.com/ferrydr/ferry/protocol"
)

// Ack says that every block of batch Seq of Cycle is durable at the
// receiver (or, answering a Barrier, that everything before it is).
type Ack struct {
	Cycle uint64
	Seq   uint32
}

// Type is FrameAck.
func (a *Ack) Type() uint8 { return FrameAck }

// Validate has nothing to check; it exists for symmetry with the others.
func (a *Ack) Validate() error { return nil }

// Append appends a's payload to dst.
func (a *Ack) Append(dst []byte) []byte { return appendU32(appendU64(dst, a.Cycle), a.Seq) }

// Decode parses a payload into a.
func (a *Ack) Decode(b []byte) error {
	r := reader{b: b, frame: "ack"}
	a.Cycle, a.Seq = r.u64(), r.u32()
	return r.end()
}

// Barrier asks the receiver to reply with Ack{Cycle, Seq} once every batch
// sent before it is durable. Seq is the sender's own number for the
// barrier, taken from the same sequence as batches.
type Barrier struct {
	Cycle uint64
	Seq   uint32
}

// Type is FrameBarrier.
func (b *Barrier) Type() uint8 { return FrameBarrier }

// Validate has nothing to check.
func (b *Barrier) Validate() error { return nil }

// Append appends b's payload to dst.
func (b *Barrier) Append(dst []byte) []byte { return appendU32(appendU64(dst, b.Cycle), b.Seq) }

// Decode parses a payload into b.
func (b *Barrier) Decode(p []byte) error {
	r := reader{b: p, frame: "barrier"}
	b.Cycle, b.Seq = r.u64(), r.u32()
	return r.end()
}

// End completes a cycle's manifest: Parts parts (0..Parts-1) were sent,
// with Entries entries in all, describing the view taken at
// InstantUnixNano (agent clock) with the given consistency. The cycle is
// complete at the receiver once every part has arrived and every block it
// needed is durable.
type End struct {
	Cycle           uint64
	Parts           uint32
	Entries         uint64
	InstantUnixNano int64
	Consistency     uint8 // ConsistencyInconsistent, ConsistencyCrash, ConsistencyApp
}

// Type is FrameEnd.
func (e *End) Type() uint8 { return FrameEnd }

// Validate checks the consistency level and that at least one part was sent.
func (e *End) Validate() error {
	if e.Consistency > ConsistencyApp {
		return invalid("end", "unknown consistency %d", e.Consistency)
	}
	if e.Parts == 0 {
		return invalid("end", "no parts")
	}
	if e.Entries > uint64(e.Parts)*MaxEntriesPerFrame {
		return invalid("end", "%d entries cannot fit in %d parts", e.Entries, e.Parts)
	}
	return nil
}

// Append appends e's payload to dst.
func (e *End) Append(dst []byte) []byte {
	dst = appendU64(dst, e.Cycle)
	dst = appendU32(dst, e.Parts)
	dst = appendU64(dst, e.Entries)
	dst = appendU64(dst, uint64(e.InstantUnixNano))
	return append(dst, e.Consistency)
}

// Decode parses a payload into e.
func (e *End) Decode(b []byte) error {
	r := reader{b: b, frame: "end"}
	e.Cycle = r.u64()
	e.Parts = r.u32()
	e.Entries = r.u64()
	e.InstantUnixNano = int64(r.u64())
	e.Consistency = r.u8()
	if err := r.end(); err != nil {
		return err
	}
	return e.Validate()
}

// Error is the receiver refusing batch Seq of Cycle (Seq is meaningless
// when the whole cycle is refused, e.g. code conflict for a cycle that is
// already complete). The stream goes on; the sender resends or abandons
// the cycle as the code says. A terminal failure of the stream uses the
// generic error frame of package frame instead.
type Error struct {
	Cycle   uint64
	Seq     uint32
	Code    protocol.Code
	Message string
}

// Type is FrameError.
func (e *Error) Type() uint8 { return FrameError }

func (e *Error) Error() string {
	return fmt.Sprintf("cycle %d batch %d refused: %s", e.Cycle, e.Seq, (&protocol.Error{Code: e.Code, Message: e.Message}).Error())
}

// Unwrap gives the wire error, so errors.Is matches the code's sentinel.
func (e *Error) Unwrap() error { return &protocol.Error{Code: e.Code, Message: e.Message} }

// Validate checks the code and the message length.
func (e *Error) Validate() error {
	if !e.Code.Valid() {
		return invalid("error", "malformed code %q", e.Code)
	}
	if len(e.Message) > protocol.MaxMessageLen {
		return tooLarge("error", "message of %d bytes over %d", len(e.Message), protocol.MaxMessageLen)
	}
	if !utf8.ValidString(e.Message) {
		return invalid("error", "message is not UTF-8")
	}
	return nil
}

// Append appends e's payload to dst.
func (e *Error) Append(dst []byte) []byte {
	dst = appendU64(dst, e.Cycle)
	dst = appendU32(dst, e.Seq)
	dst = append(dst, uint8(len(e.Code)))
	dst = append(dst, e.Code...)
	dst = appendU16(dst, uint16(len(e.Message)))
	return append(dst, e.Message...)
}

// Decode parses a payload into e.
func (e *Error) Decode(b []byte) error {
	r := reader{b: b, frame: "error"}
	e.Cycle = r.u64()
	e.Seq = r.u32()
	codeLen := r.u8()
	if r.err == nil && codeLen > protocol.MaxCodeLen {
		return tooLarge("error", "code of %d bytes over %d", codeLen, protocol.MaxCodeLen)
	}
	e.Code = protocol.Code(r.bytes(int(codeLen)))
	msgLen := r.u16()
	if r.err == nil && int(msgLen) > protocol.MaxMessageLen {
		return tooLarge("error", "message of %d bytes over %d", msgLen, protocol.MaxMessageLen)
	}
	e.Message = string(r.bytes(int(msgLen)))
	if err := r.end(); err != nil {
		return err
	}
	return e.Validate()
}
