package data

import (
	"fmt"

	"github.com/ferrydr/ferry/protocol"
)

// Frame types of replication streams. Append-only; type 0 is the generic
// error frame of package frame.
const (
	FrameManifest = 1 // Manifest: sender → receiver
	FrameNeed     = 2 // Need: receiver → sender
	FrameBatch    = 3 // Batch: sender → receiver
	FrameAck      = 4 // Ack: receiver → sender
	FrameError    = 5 // Error: receiver → sender, a batch or cycle refused
	FrameHashes   = 6 // HashRun: sender → receiver (resync)
	FrameEnd      = 7 // End: sender → receiver
	FrameBarrier  = 8 // Barrier: sender → receiver
)

// Limits. A frame that breaks one is refused whole.
const (
	MaxEntriesPerFrame = 8192    // entries of a manifest part, blocks of a batch, hashes of a run
	MaxBlockSize       = 1 << 20 // plain bytes of one block (and of one patch encoding)
	// SealedOverhead is what a sealed block's data adds to its encoding:
	// the sealed key record, the nonce and the GCM tag.
	SealedOverhead = 96 + 12 + 16
	MaxBatchBytes  = 16 << 20 // sum of the Data lengths of one batch
	// MaxFrameSize is the payload limit to give frame.NewReader on these
	// streams: a full batch plus its per-block headers.
	MaxFrameSize = MaxBatchBytes + MaxEntriesPerFrame*blockHeaderLen + 64
)

// Block and entry flags.
const (
	FlagZero  uint8 = 1 // the block is all zeros: no hash, no data on the wire
	FlagPatch uint8 = 2 // Data (after the codec) is a patch: runs to write over the receiver's current block
	// FlagSealed: Data is an encrypted repository's chunk as stored —
	// sealed key record(96) ‖ nonce(12) ‖ AES-GCM ciphertext+tag of the
	// chunk encoded with Codec — for an agent holding the repository key.
	// Only on restore streams (docs/protocol.md "Sealed blocks").
	FlagSealed uint8 = 4
)

// Codecs of block data.
const (
	CodecNone uint8 = 0
	CodecZstd uint8 = 1
	// CodecS2: one S2 block (github.com/klauspost/compress/s2), about four
	// times faster to make than zstd's fastest level for a somewhat larger
	// result. Sent only to a controller that offers it
	// (msg.CycleBeginResponse.Codecs); never on restore streams.
	CodecS2 uint8 = 2
)

// Consistency of a cycle's view, as End reports it.
const (
	ConsistencyInconsistent uint8 = 0
	ConsistencyCrash        uint8 = 1
	ConsistencyApp          uint8 = 2
)

// Hash is a block's content hash (the repository's content address).
type Hash [32]byte

// FormatError says that a frame is malformed or breaks a limit. It matches
// protocol.ErrInvalid, or protocol.ErrTooLarge for a broken limit.
type FormatError struct {
	Frame  string // "manifest", "batch", …
	Reason string
	tooBig bool
}

func (e *FormatError) Error() string { return "data: " + e.Frame + ": " + e.Reason }

func (e *FormatError) Unwrap() error {
	if e.tooBig {
		return protocol.ErrTooLarge
	}
	return protocol.ErrInvalid
}

func invalid(frame, format string, args ...any) error {
	return &FormatError{Frame: frame, Reason: fmt.Sprintf(format, args...)}
}

func tooLarge(frame, format string, args ...any) error {
	return &FormatError{Frame: frame, Reason: fmt.Sprintf(format, args...), tooBig: true}
}
