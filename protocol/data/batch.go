package data

import "slices"

// Block is one block on the wire. A zero block (FlagZero) carries only its
// length: no hash, codec or data. Otherwise Data is PlainLen bytes encoded
// with Codec; with FlagPatch the plain bytes are a patch (DecodePatch) to
// apply over the receiver's current content of the block, and Hash is the
// hash of the block after patching.
type Block struct {
	Disk     uint16
	Block    uint64
	Hash     Hash
	Codec    uint8
	Flags    uint8
	PlainLen uint32 // plain bytes (after the codec); for a zero block, the block's length
	Data     []byte // after Decode, a slice of the frame payload
}

const (
	blockHeaderLen     = 2 + 8 + 1 + 32 + 1 + 4 + 4
	zeroBlockHeaderLen = 2 + 8 + 1 + 4
)

func (b *Block) validate(i int) error {
	if b.Flags&^(FlagZero|FlagPatch|FlagSealed) != 0 {
		return invalid("batch", "block %d: flags %#x", i, b.Flags)
	}
	if b.PlainLen == 0 || b.PlainLen > MaxBlockSize {
		return tooLargeOrInvalid(b.PlainLen > MaxBlockSize, "batch", "block %d: plain length %d not in 1..%d", i, b.PlainLen, MaxBlockSize)
	}
	if b.Flags&FlagZero != 0 {
		if b.Flags&(FlagPatch|FlagSealed) != 0 || b.Hash != (Hash{}) || b.Codec != CodecNone || len(b.Data) != 0 {
			return invalid("batch", "block %d: a zero block carries no patch or sealed flag, hash, codec or data", i)
		}
		return nil
	}
	if b.Flags&FlagSealed != 0 {
		if b.Flags&FlagPatch != 0 || b.Codec > CodecZstd {
			return invalid("batch", "block %d: a sealed block carries no patch and codec none or zstd", i)
		}
		if len(b.Data) < SealedOverhead || len(b.Data) > MaxBlockSize+SealedOverhead {
			return tooLargeOrInvalid(len(b.Data) > MaxBlockSize+SealedOverhead, "batch", "block %d: sealed data of %d bytes not in %d..%d", i, len(b.Data), SealedOverhead, MaxBlockSize+SealedOverhead)
		}
		return nil
	}
	switch b.Codec {
	case CodecNone:
		if len(b.Data) != int(b.PlainLen) {
			return invalid("batch", "block %d: uncompressed data of %d bytes, plain length %d", i, len(b.Data), b.PlainLen)
		}
	case CodecZstd, CodecS2:
		if len(b.Data) == 0 || len(b.Data) > MaxBlockSize {
			return tooLargeOrInvalid(len(b.Data) > MaxBlockSize, "batch", "block %d: compressed data of %d bytes not in 1..%d", i, len(b.Data), MaxBlockSize)
		}
	default:
		return invalid("batch", "block %d: unknown codec %d", i, b.Codec)
	}
	return nil
}

func tooLargeOrInvalid(big bool, frame, format string, args ...any) error {
	if big {
		return tooLarge(frame, format, args...)
	}
	return invalid(frame, format, args...)
}

// Batch is a numbered group of blocks of one cycle. Seq counts batches on
// the stream from 0; the receiver acks a batch once all its blocks are
// durable.
type Batch struct {
	Cycle  uint64
	Seq    uint32
	Blocks []Block
}

// Type is FrameBatch.
func (b *Batch) Type() uint8 { return FrameBatch }

// Validate checks b against the limits and flag rules.
func (b *Batch) Validate() error {
	if len(b.Blocks) > MaxEntriesPerFrame {
		return tooLarge("batch", "%d blocks over %d", len(b.Blocks), MaxEntriesPerFrame)
	}
	total := 0
	for i := range b.Blocks {
		if err := b.Blocks[i].validate(i); err != nil {
			return err
		}
		total += len(b.Blocks[i].Data)
	}
	if total > MaxBatchBytes {
		return tooLarge("batch", "%d data bytes over %d", total, MaxBatchBytes)
	}
	return nil
}

// Size is the payload length Append will produce.
func (b *Batch) Size() int {
	n := 8 + 4 + 4
	for i := range b.Blocks {
		if b.Blocks[i].Flags&FlagZero != 0 {
			n += zeroBlockHeaderLen
		} else {
			n += blockHeaderLen + len(b.Blocks[i].Data)
		}
	}
	return n
}

// Append appends b's payload to dst, growing dst at most once: a batch is
// up to MaxBatchBytes, and growing it block by block (a pooled buffer the
// GC emptied) was a fifth of an agent's CPU under small random churn.
func (b *Batch) Append(dst []byte) []byte {
	dst = slices.Grow(dst, b.Size())
	dst = appendU64(dst, b.Cycle)
	dst = appendU32(dst, b.Seq)
	dst = appendU32(dst, uint32(len(b.Blocks)))
	for i := range b.Blocks {
		k := &b.Blocks[i]
		dst = appendU16(dst, k.Disk)
		dst = appendU64(dst, k.Block)
		dst = append(dst, k.Flags)
		if k.Flags&FlagZero != 0 {
			dst = appendU32(dst, k.PlainLen)
			continue
		}
		dst = append(dst, k.Hash[:]...)
		dst = append(dst, k.Codec)
		dst = appendU32(dst, k.PlainLen)
		dst = appendU32(dst, uint32(len(k.Data)))
		dst = append(dst, k.Data...)
	}
	return dst
}

// Decode parses a payload into b, reusing b.Blocks' storage. Block data is
// not copied: it aliases payload.
func (b *Batch) Decode(payload []byte) error {
	r := reader{b: payload, frame: "batch"}
	b.Cycle = r.u64()
	b.Seq = r.u32()
	n := r.u32()
	if r.err != nil {
		return r.err
	}
	if n > MaxEntriesPerFrame {
		return tooLarge("batch", "%d blocks over %d", n, MaxEntriesPerFrame)
	}
	if int(n)*zeroBlockHeaderLen > len(r.b) {
		return invalid("batch", "%d blocks cannot fit in %d bytes", n, len(r.b))
	}
	if cap(b.Blocks) < int(n) {
		b.Blocks = make([]Block, n)
	}
	b.Blocks = b.Blocks[:n]
	total := 0
	for i := range b.Blocks {
		k := &b.Blocks[i]
		*k = Block{Disk: r.u16(), Block: r.u64(), Flags: r.u8()}
		if k.Flags&FlagZero != 0 {
			k.PlainLen = r.u32()
		} else {
			k.Hash = r.hash()
			k.Codec = r.u8()
			k.PlainLen = r.u32()
			dataLen := r.u32()
			if r.err != nil {
				return r.err
			}
			if dataLen > MaxBlockSize {
				return tooLarge("batch", "block %d: data of %d bytes over %d", i, dataLen, MaxBlockSize)
			}
			k.Data = r.bytes(int(dataLen))
			total += int(dataLen)
		}
		if r.err != nil {
			return r.err
		}
		if err := k.validate(i); err != nil {
			return err
		}
	}
	if total > MaxBatchBytes {
		return tooLarge("batch", "%d data bytes over %d", total, MaxBatchBytes)
	}
	return r.end()
}
