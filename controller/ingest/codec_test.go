package ingest_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

// textBlock is a compressible block (S2 and zstd both shrink it).
func textBlock(seed byte) []byte {
	return bytes.Repeat([]byte("ferry block "+string('a'+seed%26)+" "), blockSize/14+1)[:blockSize]
}

func s2Block(blk uint64, plain []byte) data.Block {
	enc := s2.Encode(nil, plain)
	return data.Block{Block: blk, Hash: hashOf(plain), Codec: data.CodecS2, PlainLen: uint32(len(plain)), Data: enc}
}

// TestIngestS2 : the controller offers S2 in the begin response; an S2
// block is stored in the codec it travelled in and reads back byte-exact;
// an S2-compressed patch applies like any other.
func TestIngestS2(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	a := textBlock(1)
	c := r.begin(msg.MapState{Valid: true})
	require.Equal(t, []string{msg.WireCodecS2}, c.Codecs)
	s := r.open()
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{{Block: 2, Hash: hashOf(a)}}})
	require.Equal(t, []bool{true}, s.need().Need)
	blk := s2Block(2, a)
	require.Less(t, len(blk.Data), len(a)/4, "the test block must compress")
	s.send(data.FrameBatch, &data.Batch{Cycle: uint64(c.Cycle), Seq: 1, Blocks: []data.Block{blk}})
	s.ack()
	require.NoError(t, s.st.CloseWrite())
	require.NoError(t, r.serveResult())
	p1, err := r.end(c.Cycle, 1, 1)
	require.NoError(t, err)
	want := make([]byte, diskSize)
	copy(want[2*blockSize:], a)
	require.True(t, bytes.Equal(want, r.exported(p1.PointID)), "the point's disk differs from the bytes sent")
	env, err := r.repo.ChunkEnvelope(ctx, storage.Hash(hashOf(a)))
	require.NoError(t, err)
	require.Equal(t, storage.CodecS2, env.Codec, "stored in the codec it travelled in")
	require.Equal(t, blk.Data, env.Data)

	// A patch whose encoding travels as S2.
	run := data.PatchRun{Offset: 64, Data: bytes.Repeat([]byte("patched "), 200)}
	after := bytes.Clone(a)
	copy(after[64:], run.Data)
	pe := data.EncodePatch(run)
	patch := data.Block{Block: 2, Hash: hashOf(after), Flags: data.FlagPatch, Codec: data.CodecS2, PlainLen: uint32(len(pe)), Data: s2.Encode(nil, pe)}
	require.Less(t, len(patch.Data), len(pe))
	c2 := r.begin(msg.MapState{Valid: true, HeadPoint: p1.PointID})
	require.True(t, c2.Patches)
	s2st := r.open()
	s2st.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c2.Cycle), Entries: []data.Entry{{Block: 2, Hash: patch.Hash}}})
	require.Equal(t, []bool{true}, s2st.need().Need)
	s2st.send(data.FrameBatch, &data.Batch{Cycle: uint64(c2.Cycle), Seq: 1, Blocks: []data.Block{patch}})
	s2st.ack()
	require.NoError(t, s2st.st.CloseWrite())
	require.NoError(t, r.serveResult())
	p2, err := r.end(c2.Cycle, 1, 1)
	require.NoError(t, err)
	copy(want[2*blockSize:], after)
	require.True(t, bytes.Equal(want, r.exported(p2.PointID)), "the patched point differs")
}

// TestIngestRefusesMalformedS2: an S2 block whose header claims another
// length than the block's plain length is refused invalid and nothing is
// stored; so is a block of an unknown codec, before its data is looked at.
func TestIngestRefusesMalformedS2(t *testing.T) {
	r := newRig(t)
	a := textBlock(2)
	short := a[:blockSize/2]
	bad := s2Block(1, short)
	bad.PlainLen, bad.Hash = blockSize, hashOf(a) // the header says blockSize/2
	c := r.begin(msg.MapState{Valid: true})
	s := r.open()
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{{Block: 1, Hash: bad.Hash}}})
	s.need()
	s.send(data.FrameBatch, &data.Batch{Cycle: uint64(c.Cycle), Seq: 1, Blocks: []data.Block{bad}})
	s.refusal(protocol.CodeInvalid)
	require.ErrorIs(t, r.serveResult(), protocol.ErrInvalid)
	ok, err := r.repo.HasChunks(context.Background(), []storage.Hash{storage.Hash(hashOf(a))})
	require.NoError(t, err)
	require.Equal(t, []bool{false}, ok)

	s = r.open()
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Part: 1, Entries: []data.Entry{{Block: 1, Hash: bad.Hash}}})
	s.need()
	unknown := s2Block(1, a)
	unknown.Codec = 3
	s.send(data.FrameBatch, &data.Batch{Cycle: uint64(c.Cycle), Seq: 1, Blocks: []data.Block{unknown}})
	pe := s.refusal(protocol.CodeInvalid)
	require.Contains(t, pe.Message, "unknown codec 3")
	require.ErrorIs(t, r.serveResult(), protocol.ErrInvalid)
}

// TestIngestS2Encrypted: an encrypted repository stores an S2 block as
// the repository's own zstd (sealed restore blocks carry none or zstd
// only), and it reads back byte-exact.
func TestIngestS2Encrypted(t *testing.T) {
	key, err := storage.GenerateKey()
	require.NoError(t, err)
	r := newRigWithKey(t, key)
	a := textBlock(3)
	c := r.begin(msg.MapState{Valid: true})
	require.Equal(t, []string{msg.WireCodecS2}, c.Codecs)
	s := r.open()
	s.send(data.FrameManifest, &data.Manifest{Cycle: uint64(c.Cycle), Entries: []data.Entry{{Block: 0, Hash: hashOf(a)}}})
	s.need()
	s.send(data.FrameBatch, &data.Batch{Cycle: uint64(c.Cycle), Seq: 1, Blocks: []data.Block{s2Block(0, a)}})
	s.ack()
	require.NoError(t, s.st.CloseWrite())
	require.NoError(t, r.serveResult())
	p, err := r.end(c.Cycle, 1, 1)
	require.NoError(t, err)
	want := make([]byte, diskSize)
	copy(want, a)
	require.True(t, bytes.Equal(want, r.exported(p.PointID)))
	env, err := r.repo.ChunkEnvelope(context.Background(), storage.Hash(hashOf(a)))
	require.NoError(t, err)
	require.Equal(t, storage.CodecZstd, env.Codec)
	require.NotNil(t, env.Key, "the chunk is sealed")
}
