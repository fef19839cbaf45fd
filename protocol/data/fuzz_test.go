package data

import (
	"bytes"
	"testing"

	"github.com/ferrydr/ferry/protocol"
)

// checkCanonical is the property every data decoder must have: any input
// gives a message or an error, never a panic; an accepted message is valid
// and re-encodes to exactly the input (one encoding per message).
func checkCanonical(t *testing.T, m Message, in []byte) {
	if err := m.Decode(in); err != nil {
		return
	}
	if err := m.Validate(); err != nil {
		t.Fatalf("decoded %+v is not valid: %v", m, err)
	}
	if out := m.Append(nil); !bytes.Equal(out, in) {
		t.Fatalf("decoded %+v re-encodes to %x, read from %x", m, out, in)
	}
}

func seed(f *testing.F, ms ...Message) {
	for _, m := range ms {
		f.Add(m.Append(nil))
	}
}

func FuzzManifest(f *testing.F) {
	seed(f, &Manifest{Cycle: 1, Final: true, Entries: []Entry{{Disk: 1, Block: 2, Hash: hashOf(1)}, {Disk: 1, Block: 3, Flags: FlagZero}}},
		&Manifest{Cycle: 2, Part: 9})
	f.Fuzz(func(t *testing.T, in []byte) { checkCanonical(t, &Manifest{}, in) })
}

func FuzzNeed(f *testing.F) {
	seed(f, &Need{Cycle: 1, Need: []bool{true, false, true}}, &Need{Cycle: 1, Need: make([]bool, 17)})
	f.Fuzz(func(t *testing.T, in []byte) { checkCanonical(t, &Need{}, in) })
}

func FuzzBatch(f *testing.F) {
	seed(f, &Batch{Cycle: 1, Seq: 2, Blocks: []Block{
		{Disk: 1, Block: 2, Hash: hashOf(1), PlainLen: 3, Data: []byte("abc")},
		{Disk: 1, Block: 3, Flags: FlagZero, PlainLen: 65536},
		{Disk: 1, Block: 4, Hash: hashOf(2), Codec: CodecZstd, Flags: FlagPatch, PlainLen: 100, Data: []byte{0x28, 0xb5, 0x2f, 0xfd}},
		{Disk: 1, Block: 5, Hash: hashOf(3), Codec: CodecS2, PlainLen: 100, Data: []byte{0x64, 0x00, 0x61, 0xfe, 0x01, 0x00}},
	}})
	f.Fuzz(func(t *testing.T, in []byte) { checkCanonical(t, &Batch{}, in) })
}

func FuzzAck(f *testing.F) {
	seed(f, &Ack{Cycle: 1, Seq: 2})
	f.Fuzz(func(t *testing.T, in []byte) { checkCanonical(t, &Ack{}, in) })
}

func FuzzBarrier(f *testing.F) {
	seed(f, &Barrier{Cycle: 1, Seq: 2})
	f.Fuzz(func(t *testing.T, in []byte) { checkCanonical(t, &Barrier{}, in) })
}

func FuzzEnd(f *testing.F) {
	seed(f, &End{Cycle: 1, Parts: 2, Entries: 3, InstantUnixNano: 1700000000000000000, Consistency: ConsistencyCrash})
	f.Fuzz(func(t *testing.T, in []byte) { checkCanonical(t, &End{}, in) })
}

func FuzzError(f *testing.F) {
	seed(f, &Error{Cycle: 1, Seq: 2, Code: protocol.CodeConflict, Message: "hash mismatch"}, &Error{Code: "x"})
	f.Fuzz(func(t *testing.T, in []byte) { checkCanonical(t, &Error{}, in) })
}

func FuzzHashes(f *testing.F) {
	seed(f, &HashRun{Disk: 1, Start: 5, Zero: []bool{false, true}, Hashes: []Hash{hashOf(1), {}}})
	f.Fuzz(func(t *testing.T, in []byte) { checkCanonical(t, &HashRun{}, in) })
}

// FuzzPatch: DecodePatch accepts only valid patches, which re-encode to the
// input and apply to a block of the largest size without error.
func FuzzPatch(f *testing.F) {
	f.Add(EncodePatch(PatchRun{Offset: 0, Data: []byte("ab")}, PatchRun{Offset: 100, Data: []byte("c")}))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 'x'})
	block := make([]byte, MaxBlockSize)
	f.Fuzz(func(t *testing.T, in []byte) {
		runs, err := DecodePatch(in)
		if err != nil {
			return
		}
		if err := ValidatePatch(runs); err != nil {
			t.Fatalf("decoded patch invalid: %v", err)
		}
		if out := EncodePatch(runs...); !bytes.Equal(out, in) {
			t.Fatalf("patch re-encodes to %x, read from %x", out, in)
		}
		if err := ApplyPatch(block, runs); err != nil {
			t.Fatalf("valid patch does not apply to a full block: %v", err)
		}
	})
}

// FuzzDecompress: arbitrary compressed bytes and plain lengths give the
// announced length or an error, never more.
func FuzzDecompress(f *testing.F) {
	c, err := NewCompressor(1)
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	_, out := c.Compress(CodecZstd, nil, textBlock(4096, 1))
	f.Add(out, uint32(4096))
	f.Add(out, uint32(100))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0}, uint32(1))
	d, err := NewDecompressor(1)
	if err != nil {
		f.Fatal(err)
	}
	defer d.Close()
	f.Fuzz(func(t *testing.T, in []byte, plainLen uint32) {
		out, err := d.Decompress(nil, in, int(plainLen))
		checkDecoded(t, out, err, plainLen)
	})
}

// FuzzDecompressS2: the same for S2 blocks, through Plain as a batch's
// blocks are decoded.
func FuzzDecompressS2(f *testing.F) {
	c, err := NewCompressor(1)
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	_, out := c.Compress(CodecS2, nil, textBlock(4096, 1))
	f.Add(out, uint32(4096))
	f.Add(out, uint32(100))
	f.Add([]byte{0x80, 0x80, 0x80, 0x80, 0x01, 0x00}, uint32(1)) // claims 256 MiB
	d, err := NewDecompressor(1)
	if err != nil {
		f.Fatal(err)
	}
	defer d.Close()
	f.Fuzz(func(t *testing.T, in []byte, plainLen uint32) {
		out, err := d.Plain(nil, &Block{Codec: CodecS2, PlainLen: plainLen, Data: in})
		checkDecoded(t, out, err, plainLen)
	})
}

func checkDecoded(t *testing.T, out []byte, err error, plainLen uint32) {
	if err != nil {
		return
	}
	if len(out) != int(plainLen) || plainLen > MaxBlockSize {
		t.Fatalf("decoded %d bytes for plain length %d", len(out), plainLen)
	}
}

func FuzzSumRun(f *testing.F) {
	z := make([]bool, GroupBlocks)
	p := make([]Print, GroupBlocks)
	for i := range z {
		z[i] = i%3 == 0
		if !z[i] {
			p[i] = PrintOf(hashOf(byte(i)))
		}
	}
	seed(f, &SumRun{Disk: 1, Start: 128, Zero: z, Prints: p})
	f.Fuzz(func(t *testing.T, in []byte) { checkCanonical(t, &SumRun{}, in) })
}

func FuzzVerifyRun(f *testing.F) {
	seed(f, &VerifyRun{Disk: 1, Start: 64, Groups: []GroupCheck{{Differ: 5, Digest: hashOf(1)}, {Digest: hashOf(2)}}})
	f.Fuzz(func(t *testing.T, in []byte) { checkCanonical(t, &VerifyRun{}, in) })
}

func FuzzVerified(f *testing.F) {
	seed(f, &Verified{Disk: 1, Start: 64, Mismatch: []bool{false, true, false}})
	f.Fuzz(func(t *testing.T, in []byte) { checkCanonical(t, &Verified{}, in) })
}
