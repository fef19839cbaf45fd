package data

import (
	"fmt"
	"runtime"

	"github.com/klauspost/compress/zstd"
)

// Compressor compresses block data with zstd at its fastest level. One
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

// Compress encodes src into dst's storage. When compression does not make
// the block smaller it returns CodecNone and src itself, so incompressible
// blocks travel as they are.
func (c *Compressor) Compress(dst, src []byte) (codec uint8, out []byte) {
	if len(src) == 0 {
		return CodecNone, src
	}
	out = c.enc.EncodeAll(src, dst[:0])
	if len(out) >= len(src) {
		return CodecNone, src
	}
	return CodecZstd, out
}

// Close releases the encoders.
func (c *Compressor) Close() error { return c.enc.Close() }

// Decompressor decodes block data. It never produces more than the plain
// length the block announces, itself at most MaxBlockSize, whatever the
// compressed bytes claim: a zstd bomb is an error, not an allocation. Safe
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

// Plain returns a block's plain bytes (a patch encoding for FlagPatch
// blocks): data itself for CodecNone, decoded into dst for CodecZstd.
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
	default:
		return nil, invalid("batch", "unknown codec %d", b.Codec)
	}
}

// Close releases the decoders.
func (d *Decompressor) Close() { d.dec.Close() }
