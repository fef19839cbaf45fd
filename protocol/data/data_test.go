package data

import (
	"bytes"
	"encoding/hex"
	"math"
	"testing"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/stretchr/testify/require"
)

func hashOf(b byte) (h Hash) {
	for i := range h {
		h[i] = b + byte(i)
	}
	return h
}

// roundTrip encodes m, checks the encoding is canonical (decode → encode
// gives the same bytes) and returns the decoded copy.
func roundTrip[T Message](t *testing.T, m T, fresh T) T {
	t.Helper()
	require.NoError(t, m.Validate())
	enc := m.Append(nil)
	require.NoError(t, fresh.Decode(enc))
	require.Equal(t, enc, fresh.Append(nil))
	return fresh
}

func TestManifest(t *testing.T) {
	m := &Manifest{Cycle: 7, Part: 2, Final: true, Entries: []Entry{
		{Disk: 0, Block: 1, Hash: hashOf(1)},
		{Disk: 1, Block: math.MaxUint64, Flags: FlagZero},
		{Disk: 65535, Block: 42, Hash: hashOf(9)},
	}}
	got := roundTrip(t, m, &Manifest{})
	require.Equal(t, m, got)

	enc := (&Manifest{Cycle: 1, Part: 0, Entries: []Entry{{Disk: 2, Block: 3, Flags: FlagZero}}}).Append(nil)
	require.Equal(t, "0000000000000001"+"00000000"+"00"+"00000001"+"0002"+"0000000000000003"+"01", hex.EncodeToString(enc),
		"layout: cycle u64, part u32, flags u8, count u32, then disk u16, block u64, flags u8 [, hash]")

	require.ErrorIs(t, (&Manifest{Entries: make([]Entry, MaxEntriesPerFrame+1)}).Validate(), protocol.ErrTooLarge)
	require.ErrorIs(t, (&Manifest{Entries: []Entry{{Flags: FlagPatch}}}).Validate(), protocol.ErrInvalid)
	require.ErrorIs(t, (&Manifest{Entries: []Entry{{Flags: FlagZero, Hash: hashOf(1)}}}).Validate(), protocol.ErrInvalid)

	// A count over the limit is refused before anything is allocated.
	bad := append([]byte{}, enc[:13]...)
	bad = appendU32(bad, MaxEntriesPerFrame+1)
	require.ErrorIs(t, (&Manifest{}).Decode(bad), protocol.ErrTooLarge)
	// A count the remaining bytes cannot hold is refused before allocating.
	bad = appendU32(append([]byte{}, enc[:13]...), 5000)
	require.ErrorIs(t, (&Manifest{}).Decode(bad), protocol.ErrInvalid)
	// Unknown manifest flags and trailing bytes.
	bad = append([]byte{}, enc...)
	bad[12] = 2
	require.ErrorIs(t, (&Manifest{}).Decode(bad), protocol.ErrInvalid)
	require.ErrorIs(t, (&Manifest{}).Decode(append(enc, 0)), protocol.ErrInvalid)
	for cut := range enc {
		require.Error(t, (&Manifest{}).Decode(enc[:cut]), "cut at %d", cut)
	}
}

func TestNeed(t *testing.T) {
	n := &Need{Cycle: 3, Part: 1, Need: []bool{true, false, false, true, true, false, false, false, true}}
	require.Equal(t, n, roundTrip(t, n, &Need{}))
	enc := n.Append(nil)
	require.Equal(t, []byte{0b00011001, 0b00000001}, enc[16:], "bitmap LSB first")
	bad := append([]byte{}, enc...)
	bad[len(bad)-1] |= 0b10 // a bit past entry 9
	require.ErrorIs(t, (&Need{}).Decode(bad), protocol.ErrInvalid)
	empty := &Need{Cycle: 1, Need: []bool{}}
	require.Equal(t, 16, len(empty.Append(nil)))
	roundTrip(t, empty, &Need{})
}

func TestBatch(t *testing.T) {
	b := &Batch{Cycle: 9, Seq: 4, Blocks: []Block{
		{Disk: 1, Block: 10, Hash: hashOf(3), Codec: CodecNone, PlainLen: 5, Data: []byte("hello")},
		{Disk: 1, Block: 11, Flags: FlagZero, PlainLen: 65536},
		{Disk: 2, Block: 12, Hash: hashOf(4), Codec: CodecZstd, Flags: FlagPatch, PlainLen: 4096, Data: []byte{1, 2, 3}},
		{Disk: 2, Block: 13, Hash: hashOf(6), Codec: CodecS2, PlainLen: 4096, Data: []byte{0x80, 0x20, 0}},
	}}
	got := roundTrip(t, b, &Batch{})
	require.Equal(t, b.Blocks[3], got.Blocks[3])
	require.Equal(t, b.Blocks[0], got.Blocks[0])
	sealed := &Batch{Blocks: []Block{{Disk: 1, Block: 2, Hash: hashOf(5), Codec: CodecZstd, Flags: FlagSealed, PlainLen: 4096, Data: make([]byte, SealedOverhead+7)}}}
	require.Equal(t, sealed.Blocks[0], roundTrip(t, sealed, &Batch{}).Blocks[0], "a sealed block's data length is its own, not the plain length")
	require.Equal(t, Block{Disk: 1, Block: 11, Flags: FlagZero, PlainLen: 65536}, got.Blocks[1])
	require.Equal(t, b.Size(), len(b.Append(nil)))

	// Decoded data aliases the payload: no copy per block.
	enc := b.Append(nil)
	require.NoError(t, got.Decode(enc))
	enc[len(enc)-1] = 99
	require.Equal(t, byte(99), got.Blocks[3].Data[2])

	zero := (&Batch{Cycle: 1, Seq: 2, Blocks: []Block{{Disk: 3, Block: 4, Flags: FlagZero, PlainLen: 8}}}).Append(nil)
	require.Equal(t, "0000000000000001"+"00000002"+"00000001"+"0003"+"0000000000000004"+"01"+"00000008", hex.EncodeToString(zero),
		"a zero block is a marker: disk, block, flags, length")

	for name, blk := range map[string]Block{
		"zero with data":      {Flags: FlagZero, PlainLen: 1, Data: []byte{0}},
		"zero with hash":      {Flags: FlagZero, PlainLen: 1, Hash: hashOf(1)},
		"zero and patch":      {Flags: FlagZero | FlagPatch, PlainLen: 1},
		"unknown flag":        {Flags: 8, PlainLen: 1, Data: []byte{0}},
		"sealed too short":    {Flags: FlagSealed, Hash: hashOf(1), PlainLen: 1, Data: make([]byte, SealedOverhead-1)},
		"sealed and patch":    {Flags: FlagSealed | FlagPatch, Hash: hashOf(1), PlainLen: 1, Data: make([]byte, SealedOverhead+1)},
		"sealed and zero":     {Flags: FlagSealed | FlagZero, PlainLen: 1},
		"sealed, bad codec":   {Flags: FlagSealed, Codec: 9, Hash: hashOf(1), PlainLen: 1, Data: make([]byte, SealedOverhead+1)},
		"sealed s2":           {Flags: FlagSealed, Codec: CodecS2, Hash: hashOf(1), PlainLen: 1, Data: make([]byte, SealedOverhead+1)},
		"s2 without data":     {Codec: CodecS2, PlainLen: 1},
		"empty":               {PlainLen: 0},
		"none length differs": {PlainLen: 2, Data: []byte{0}},
		"unknown codec":       {Codec: 9, PlainLen: 1, Data: []byte{0}},
		"zstd without data":   {Codec: CodecZstd, PlainLen: 1},
	} {
		require.ErrorIs(t, (&Batch{Blocks: []Block{blk}}).Validate(), protocol.ErrInvalid, name)
		if name != "zero with hash" && name != "zero with data" { // their encodings drop what is wrong
			enc := (&Batch{Blocks: []Block{blk}}).Append(nil)
			require.Error(t, (&Batch{}).Decode(enc), name)
		}
	}
	require.ErrorIs(t, (&Batch{Blocks: []Block{{PlainLen: MaxBlockSize + 1, Data: make([]byte, MaxBlockSize+1)}}}).Validate(), protocol.ErrTooLarge)

	// The batch total is bounded: 17 blocks of 1 MiB are over 16 MiB.
	big := &Batch{}
	blockData := make([]byte, MaxBlockSize)
	for i := 0; i < 17; i++ {
		big.Blocks = append(big.Blocks, Block{Block: uint64(i), PlainLen: MaxBlockSize, Data: blockData})
	}
	require.ErrorIs(t, big.Validate(), protocol.ErrTooLarge)
	require.ErrorIs(t, (&Batch{}).Decode(big.Append(nil)), protocol.ErrTooLarge)
	big.Blocks = big.Blocks[:16]
	require.NoError(t, big.Validate())
	require.LessOrEqual(t, big.Size(), MaxFrameSize)
}

func TestSmallFrames(t *testing.T) {
	a := &Ack{Cycle: 5, Seq: 6}
	require.Equal(t, a, roundTrip(t, a, &Ack{}))
	require.Equal(t, "0000000000000005"+"00000006", hex.EncodeToString(a.Append(nil)))
	br := &Barrier{Cycle: 5, Seq: 7}
	require.Equal(t, br, roundTrip(t, br, &Barrier{}))

	e := &End{Cycle: 5, Parts: 3, Entries: 20000, InstantUnixNano: -1, Consistency: ConsistencyApp}
	require.Equal(t, e, roundTrip(t, e, &End{}))
	require.ErrorIs(t, (&End{Parts: 1, Consistency: 3}).Validate(), protocol.ErrInvalid)
	require.ErrorIs(t, (&End{Parts: 0}).Validate(), protocol.ErrInvalid)
	require.ErrorIs(t, (&End{Parts: 1, Entries: MaxEntriesPerFrame + 1}).Validate(), protocol.ErrInvalid)
	require.ErrorIs(t, (&End{}).Decode((&End{Parts: 1, Consistency: 7}).Append(nil)), protocol.ErrInvalid)

	fe := &Error{Cycle: 5, Seq: 2, Code: protocol.CodeConflict, Message: "block 17 hash mismatch"}
	got := roundTrip(t, fe, &Error{})
	require.Equal(t, fe, got)
	require.ErrorIs(t, got, protocol.ErrConflict)
	require.Equal(t, "cycle 5 batch 2 refused: block 17 hash mismatch", got.Error())
	require.ErrorIs(t, (&Error{Code: "Bad"}).Validate(), protocol.ErrInvalid)
	require.ErrorIs(t, (&Error{Code: "x", Message: string(make([]byte, protocol.MaxMessageLen+1))}).Validate(), protocol.ErrTooLarge)
	require.ErrorIs(t, (&Error{Code: "x", Message: "\xff"}).Validate(), protocol.ErrInvalid)
}

func TestHashRun(t *testing.T) {
	h := &HashRun{Disk: 3, Start: 100, Zero: []bool{false, true, false}, Hashes: []Hash{hashOf(1), {}, hashOf(2)}}
	require.Equal(t, h, roundTrip(t, h, &HashRun{}))
	require.Len(t, h.Append(nil), 2+8+4+1+2*32, "zero blocks carry no hash")
	require.ErrorIs(t, (&HashRun{Zero: []bool{true}, Hashes: []Hash{hashOf(1)}}).Validate(), protocol.ErrInvalid)
	require.ErrorIs(t, (&HashRun{Zero: []bool{true}, Hashes: []Hash{{}, {}}}).Validate(), protocol.ErrInvalid)
	require.ErrorIs(t, (&HashRun{}).Validate(), protocol.ErrInvalid, "empty")
	require.ErrorIs(t, (&HashRun{Start: math.MaxUint64, Zero: []bool{true, true}, Hashes: make([]Hash, 2)}).Validate(), protocol.ErrInvalid, "overflow")
	require.NoError(t, (&HashRun{Start: math.MaxUint64, Zero: []bool{true}, Hashes: make([]Hash, 1)}).Validate())
	// A count whose hashes the payload cannot hold is refused before allocating.
	bad := appendU32(appendU64(appendU16(nil, 1), 0), MaxEntriesPerFrame)
	bad = append(bad, make([]byte, MaxEntriesPerFrame/8)...)
	require.ErrorIs(t, (&HashRun{}).Decode(bad), protocol.ErrInvalid)
}

func TestWriteFrameThroughFrames(t *testing.T) {
	var buf bytes.Buffer
	w := frame.NewWriter(&buf)
	msgs := []Message{
		&Manifest{Cycle: 1, Final: true, Entries: []Entry{{Disk: 1, Block: 2, Hash: hashOf(5)}}},
		&Need{Cycle: 1, Need: []bool{true}},
		&Batch{Cycle: 1, Blocks: []Block{{Disk: 1, Block: 2, Hash: hashOf(5), PlainLen: 3, Data: []byte("abc")}}},
		&Barrier{Cycle: 1, Seq: 1},
		&Ack{Cycle: 1, Seq: 1},
		&End{Cycle: 1, Parts: 1, Entries: 1, Consistency: ConsistencyCrash},
		&Error{Cycle: 1, Code: protocol.CodeBusy, Message: "later"},
		&HashRun{Disk: 1, Zero: []bool{false}, Hashes: []Hash{hashOf(2)}},
	}
	for _, m := range msgs {
		require.NoError(t, WriteFrame(w, m.Type(), m))
	}
	require.NoError(t, w.Flush())
	require.Error(t, WriteFrame(w, FrameAck, &Barrier{}), "type must match the message")
	require.ErrorIs(t, WriteFrame(w, FrameEnd, &End{}), protocol.ErrInvalid, "validated before writing")

	r := frame.NewReader(&buf, MaxFrameSize)
	fresh := []Message{&Manifest{}, &Need{}, &Batch{}, &Barrier{}, &Ack{}, &End{}, &Error{}, &HashRun{}}
	for i, want := range msgs {
		typ, payload, err := r.Next()
		require.NoError(t, err)
		require.Equal(t, want.Type(), typ)
		require.NoError(t, fresh[i].Decode(payload))
		require.Equal(t, want, fresh[i])
	}
}

// A batch is encoded into a buffer grown once: 512 blocks appended one by
// one into an empty slice used to reallocate and copy it a dozen times.
func TestBatchAppendAllocatesOnce(t *testing.T) {
	b := Batch{Cycle: 1, Seq: 1}
	for i := range 512 {
		b.Blocks = append(b.Blocks, Block{Block: uint64(i), Codec: CodecNone, PlainLen: 4096, Data: make([]byte, 4096)})
	}
	var out []byte
	allocs := testing.AllocsPerRun(10, func() { out = b.Append(nil) })
	// One allocation; the race detector adds one of its own. Growing
	// block by block took 28.
	require.LessOrEqual(t, allocs, 2.0, "Append should size its buffer once")
	require.Len(t, out, b.Size())
	var back Batch
	require.NoError(t, back.Decode(out))
	require.Len(t, back.Blocks, 512)
}
