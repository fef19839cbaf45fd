package data

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/frame"
)

// v1Messages is the content of testdata/v1-frames.bin: one frame of every
// data frame type of protocol version 1.
func v1Messages() []Message {
	return []Message{
		&Manifest{Cycle: 41, Part: 0, Final: true, Entries: []Entry{
			{Disk: 0, Block: 7, Hash: hashOf(0xA0)},
			{Disk: 1, Block: 8, Flags: FlagZero},
		}},
		&Need{Cycle: 41, Part: 0, Need: []bool{true, false}},
		&Batch{Cycle: 41, Seq: 0, Blocks: []Block{
			{Disk: 0, Block: 7, Hash: hashOf(0xA0), Codec: CodecNone, PlainLen: 4, Data: []byte("ferr")},
			{Disk: 1, Block: 8, Flags: FlagZero, PlainLen: 65536},
			{Disk: 0, Block: 9, Hash: hashOf(0xB0), Codec: CodecNone, Flags: FlagPatch, PlainLen: 10,
				Data: EncodePatch(PatchRun{Offset: 4096, Data: []byte("yy")})},
		}},
		&Ack{Cycle: 41, Seq: 0},
		&Error{Cycle: 41, Seq: 1, Code: protocol.CodeConflict, Message: "block 9: hash mismatch"},
		&HashRun{Disk: 2, Start: 1000, Zero: []bool{false, true, false}, Hashes: []Hash{hashOf(1), {}, hashOf(2)}},
		&End{Cycle: 41, Parts: 1, Entries: 2, InstantUnixNano: 1_790_000_000_123_456_789, Consistency: ConsistencyCrash},
		&Barrier{Cycle: 41, Seq: 2},
	}
}

// TestV1Fixture opens the frames of the released version 1: they must
// still decode to the same messages, and the messages must still encode to
// the same bytes. A change here is a wire format change: it needs a new
// protocol version (docs/protocol.md, "Changes"). FERRY_UPDATE_FIXTURES=1
// rewrites the file, for a new version's fixture only.
func TestV1Fixture(t *testing.T) {
	path := filepath.Join("testdata", "v1-frames.bin")
	var buf bytes.Buffer
	w := frame.NewWriter(&buf)
	for _, m := range v1Messages() {
		require.NoError(t, WriteFrame(w, m.Type(), m))
	}
	require.NoError(t, w.Flush())
	if os.Getenv("FERRY_UPDATE_FIXTURES") == "1" {
		require.NoError(t, os.WriteFile(path, buf.Bytes(), 0o644))
	}
	fixture, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, fixture, buf.Bytes(), "encoding of the v1 messages changed")

	r := frame.NewReader(bytes.NewReader(fixture), MaxFrameSize)
	fresh := []Message{&Manifest{}, &Need{}, &Batch{}, &Ack{}, &Error{}, &HashRun{}, &End{}, &Barrier{}}
	for i, want := range v1Messages() {
		typ, payload, err := r.Next()
		require.NoError(t, err)
		require.Equal(t, want.Type(), typ)
		require.NoError(t, fresh[i].Decode(payload))
		require.Equal(t, want, fresh[i])
	}
	_, _, err = r.Next()
	require.ErrorIs(t, err, io.EOF)
}
