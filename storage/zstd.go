package storage

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// codecs holds the zstd encoders and the decoder of a repository; all are
// safe for concurrent EncodeAll/DecodeAll.
type codecs struct {
	enc *zstd.Encoder // level fastest: chunks encoded on the ingest path
	dec *zstd.Decoder

	// cold encodes what compaction rewrites, at zstd's default level:
	// about 4 % smaller than fastest on mixed 64 KiB blocks for about
	// 1.6 × its CPU (docs/storage-format.md "Compaction"), which the
	// compactor can afford because it runs off the ingest path at a
	// bounded rate. Made on first use: a repository that never compacts
	// does not hold its state.
	coldOnce sync.Once
	cold     *zstd.Encoder
	coldErr  error
}

func newCodecs() (*codecs, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(2), zstd.WithZeroFrames(true), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(2),
		zstd.WithDecoderMaxMemory(2*MaxBlockSize), zstd.WithDecoderMaxWindow(2*MaxBlockSize))
	if err != nil {
		enc.Close()
		return nil, err
	}
	return &codecs{enc: enc, dec: dec}, nil
}

func (c *codecs) close() {
	c.enc.Close()
	c.dec.Close()
	if c.cold != nil {
		c.cold.Close()
	}
}

// compress returns zstd of plain if it saves at least 1/32 of it; random
// data is then stored as is (zstd detects it and returns quickly).
func (c *codecs) compress(plain []byte) (Codec, []byte) {
	return keepIfSmaller(CodecZstd, c.enc.EncodeAll(plain, make([]byte, 0, len(plain))), plain)
}

// compressCold returns zstd at the default level of plain if it saves at
// least 1/32 of it: for chunks that have outlived the churn and are
// rewritten once, by compaction.
func (c *codecs) compressCold(plain []byte) (Codec, []byte) {
	c.coldOnce.Do(func() {
		// The window need not exceed the largest block: EncodeAll of a
		// block never looks further back than its own start.
		c.cold, c.coldErr = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault),
			zstd.WithEncoderConcurrency(2), zstd.WithWindowSize(MaxBlockSize),
			zstd.WithZeroFrames(true), zstd.WithEncoderCRC(false))
	})
	if c.coldErr != nil {
		// Options fixed at build time cannot fail at run time; should
		// they, fastest is still a valid encoding.
		return c.compress(plain)
	}
	return keepIfSmaller(CodecZstd, c.cold.EncodeAll(plain, make([]byte, 0, len(plain))), plain)
}

// compressFast returns S2 of plain if it saves at least 1/32 of it. The
// controller uses it for the blocks it builds itself (patched blocks, and
// blocks an agent sent uncompressed): S2 costs a fraction of zstd's CPU on
// the ingest path, and the compactor (compact.go) re-encodes such chunks
// to zstd later, when they have outlived the churn.
func compressFast(plain []byte) (Codec, []byte) {
	return keepIfSmaller(CodecS2, s2.Encode(nil, plain), plain)
}

// keepIfSmaller keeps an encoding of plain only when it saves at least
// 1/32 of it (the rule of docs/storage-format.md "Chunks and hashing", the
// same on the wire); else the block is stored as it is.
func keepIfSmaller(codec Codec, encoded, plain []byte) (Codec, []byte) {
	if len(encoded) < len(plain)-len(plain)/32 {
		return codec, encoded
	}
	return CodecNone, plain
}

// decode returns the plaintext of encoded bytes, which must be exactly
// plainLen long.
func (c *codecs) decode(codec Codec, data []byte, plainLen int) ([]byte, error) {
	return c.decodeInto(nil, codec, data, plainLen)
}

// decodeInto is decode writing into buf when it has room for plainLen
// bytes (a pooled buffer), into a new buffer else; for CodecNone the
// result is data itself.
func (c *codecs) decodeInto(buf []byte, codec Codec, data []byte, plainLen int) ([]byte, error) {
	if plainLen < 0 || plainLen > MaxBlockSize {
		return nil, fmt.Errorf("plain length %d out of range", plainLen)
	}
	if codec != CodecNone && cap(buf) < plainLen {
		buf = make([]byte, plainLen)
	}
	switch codec {
	case CodecNone:
		if len(data) != plainLen {
			return nil, fmt.Errorf("length %d, want %d", len(data), plainLen)
		}
		return data, nil
	case CodecZstd:
		out, err := c.dec.DecodeAll(data, buf[:0])
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		if len(out) != plainLen {
			return nil, fmt.Errorf("decoded length %d, want %d", len(out), plainLen)
		}
		return out, nil
	case CodecS2:
		// s2.DecodedLen reads the block's own header: checked against
		// plainLen before any decoding, so a lying header costs nothing.
		n, err := s2.DecodedLen(data)
		if err != nil {
			return nil, fmt.Errorf("s2: %w", err)
		}
		if n != plainLen {
			return nil, fmt.Errorf("s2 block of %d bytes, want %d", n, plainLen)
		}
		out, err := s2.Decode(buf[:plainLen], data)
		if err != nil {
			return nil, fmt.Errorf("s2: %w", err)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("unknown codec %d", codec)
	}
}
