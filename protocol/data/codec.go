package data

import (
	"fmt"
	"runtime"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Compressor compresses block data with zstd at its fastest level or with
// S2, as the caller chooses per block. One
// Compressor is safe for concurrent use by up to its concurrency of
// goroutines at a time (more wait); its encoders are its own, so several
// agents or tests in one process share nothing.
type Compressor struct {
	enc *zstd.Encoder
}

// NewCompressor returns a Compressor with concurrency encoders
// (GOMAXPROCS when ≤ 0).
func NewCompressor(concurrency int) (*Compressor, error) {
	if concurrency <= 0 {
		concurrency = runtime.GOMAXPROCS(0)
	}
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(concurrency),
		// The block hash, verified by the receiver, already covers the
		// content; a second checksum would only cost time.
		zstd.WithEncoderCRC(false),
		// One segment sized to the block: the receiver needs no window
		// beyond the block itself.
		zstd.WithSingleSegment(true),
		zstd.WithWindowSize(MaxBlockSize),
	)
	if err != nil {
		return nil, fmt.Errorf("data: zstd encoder: %w", err)
	}
	return &Compressor{enc: enc}, nil
}

// Compress encodes src with codec (CodecZstd or CodecS2; CodecNone returns
// src) into dst's storage. When the encoding does not save at least 1/32 of
// the block it returns CodecNone and src itself: incompressible blocks
// travel as they are, and the receiver does not spend a decode on a block
// that barely shrank (the repository stores by the same rule).
func (c *Compressor) Compress(codec uint8, dst, src []byte) (uint8, []byte) {
	var out []byte
	switch {
	case len(src) == 0 || codec == CodecNone:
		return CodecNone, src
	case codec == CodecS2:
		// s2.Encode writes into dst only when it has room for the worst
		// case; a block is at most MaxBlockSize, so n is never -1.
		n := s2.MaxEncodedLen(len(src))
		if cap(dst) < n {
			dst = make([]byte, n)
		}
		out = s2.Encode(dst[:n], src)
	default:
		codec = CodecZstd
		out = c.enc.EncodeAll(src, dst[:0])
	}
	if len(out) >= len(src)-len(src)/32 {
		return CodecNone, src
	}
	return codec, out
}

// Close releases the encoders.
func (c *Compressor) Close() error { return c.enc.Close() }

// Decompressor decodes block data. It never produces more than the plain
// length the block announces, itself at most MaxBlockSize, whatever the
// compressed bytes claim: a zstd or S2 bomb is an error, not an
// allocation. Safe
// for concurrent use; its decoders are its own.
type Decompressor struct {
	dec *zstd.Decoder
}

// NewDecompressor returns a Decompressor with concurrency decoders
// (GOMAXPROCS when ≤ 0).
func NewDecompressor(concurrency int) (*Decompressor, error) {
	if concurrency <= 0 {
		concurrency = runtime.GOMAXPROCS(0)
	}
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(concurrency),
		zstd.WithDecoderMaxMemory(MaxBlockSize),
		zstd.WithDecoderMaxWindow(MaxBlockSize),
		zstd.WithDecodeAllCapLimit(true),
	)
	if err != nil {
		return nil, fmt.Errorf("data: zstd decoder: %w", err)
	}
	return &Decompressor{dec: dec}, nil
}

// Decompress decodes zstd data that must yield exactly plainLen bytes
// (1..MaxBlockSize), into dst's storage when it is large enough.
func (d *Decompressor) Decompress(dst, src []byte, plainLen int) ([]byte, error) {
	if plainLen <= 0 || plainLen > MaxBlockSize {
		return nil, tooLargeOrInvalid(plainLen > MaxBlockSize, "zstd", "plain length %d not in 1..%d", plainLen, MaxBlockSize)
	}
	if cap(dst) < plainLen {
		dst = make([]byte, 0, plainLen)
	}
	// The capacity is the limit: the decoder refuses to write past it.
	out, err := d.dec.DecodeAll(src, dst[:0:plainLen])
	if err != nil {
		return nil, &FormatError{Frame: "zstd", Reason: err.Error()}
	}
	if len(out) != plainLen {
		return nil, invalid("zstd", "decoded %d bytes, block says %d", len(out), plainLen)
	}
	return out, nil
}

// DecompressS2 decodes one S2 block that must yield exactly plainLen bytes
// (1..MaxBlockSize), into dst's storage when it is large enough. The
// length the block's header claims is checked before anything is
// allocated, so a lying header costs nothing.
func DecompressS2(dst, src []byte, plainLen int) ([]byte, error) {
	if plainLen <= 0 || plainLen > MaxBlockSize {
		return nil, tooLargeOrInvalid(plainLen > MaxBlockSize, "s2", "plain length %d not in 1..%d", plainLen, MaxBlockSize)
	}
	n, err := s2.DecodedLen(src)
	if err != nil {
		return nil, &FormatError{Frame: "s2", Reason: err.Error()}
	}
	if n != plainLen {
		return nil, invalid("s2", "block claims %d bytes, block says %d", n, plainLen)
	}
	if cap(dst) < plainLen {
		dst = make([]byte, plainLen)
	}
	out, err := s2.Decode(dst[:plainLen], src)
	if err != nil {
		return nil, &FormatError{Frame: "s2", Reason: err.Error()}
	}
	return out, nil
}

// Plain returns a block's plain bytes (a patch encoding for FlagPatch
// blocks): data itself for CodecNone, decoded into dst for CodecZstd and
// CodecS2.
func (d *Decompressor) Plain(dst []byte, b *Block) ([]byte, error) {
	if b.Flags&FlagZero != 0 {
		return nil, invalid("zstd", "a zero block has no data")
	}
	switch b.Codec {
	case CodecNone:
		if len(b.Data) != int(b.PlainLen) {
			return nil, invalid("batch", "uncompressed data of %d bytes, plain length %d", len(b.Data), b.PlainLen)
		}
		return b.Data, nil
	case CodecZstd:
		return d.Decompress(dst, b.Data, int(b.PlainLen))
	case CodecS2:
		return DecompressS2(dst, b.Data, int(b.PlainLen))
	default:
		return nil, invalid("batch", "unknown codec %d", b.Codec)
	}
}

// Close releases the decoders.
func (d *Decompressor) Close() { d.dec.Close() }
