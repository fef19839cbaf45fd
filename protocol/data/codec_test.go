package data

import (
	"bytes"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	"github.com/ferrydr/ferry/protocol"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"
)

func textBlock(n int, seed uint64) []byte {
	words := []string{"replica ", "block ", "failover ", "point ", "agent ", "controller ", "disk "}
	r := rand.New(rand.NewPCG(seed, 1))
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
	}
	return b.Bytes()[:n]
}

func randomBlock(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func newCodecs(t testing.TB) (*Compressor, *Decompressor) {
	c, err := NewCompressor(2)
	require.NoError(t, err)
	d, err := NewDecompressor(2)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(); d.Close() })
	return c, d
}

func TestCodecRoundTrip(t *testing.T) {
	c, d := newCodecs(t)
	text := textBlock(64<<10, 1)
	codec, out := c.Compress(CodecZstd, nil, text)
	require.Equal(t, CodecZstd, codec)
	require.Less(t, len(out), len(text)/2)
	plain, err := d.Decompress(nil, out, len(text))
	require.NoError(t, err)
	require.Equal(t, text, plain)

	blk := &Block{Codec: codec, PlainLen: uint32(len(text)), Data: out}
	plain, err = d.Plain(make([]byte, 0, 64<<10), blk)
	require.NoError(t, err)
	require.Equal(t, text, plain)

	// Random data does not shrink: it travels as it is.
	rnd := randomBlock(64<<10, 2)
	codec, out = c.Compress(CodecZstd, nil, rnd)
	require.Equal(t, CodecNone, codec)
	require.Equal(t, rnd, out)
	plain, err = d.Plain(nil, &Block{Codec: CodecNone, PlainLen: uint32(len(rnd)), Data: out})
	require.NoError(t, err)
	require.Equal(t, rnd, plain)

	// A full-size block.
	full := textBlock(MaxBlockSize, 3)
	codec, out = c.Compress(CodecZstd, nil, full)
	require.Equal(t, CodecZstd, codec)
	plain, err = d.Decompress(nil, out, MaxBlockSize)
	require.NoError(t, err)
	require.True(t, bytes.Equal(full, plain))
}

// S2 round-trips through Plain, a block that barely shrinks travels as
// none, and CodecNone asks for no compression at all.
func TestCodecS2RoundTrip(t *testing.T) {
	c, d := newCodecs(t)
	for _, n := range []int{1, 4096, 64 << 10, MaxBlockSize} {
		text := textBlock(n, uint64(n))
		codec, out := c.Compress(CodecS2, nil, text)
		if n == 1 {
			require.Equal(t, CodecNone, codec, "one byte cannot shrink")
			continue
		}
		require.Equal(t, CodecS2, codec, n)
		require.Less(t, len(out), len(text)-len(text)/32)
		plain, err := d.Plain(nil, &Block{Codec: codec, PlainLen: uint32(n), Data: out})
		require.NoError(t, err)
		require.True(t, bytes.Equal(text, plain), n)
		// Into a caller's buffer that is large enough.
		buf := make([]byte, 0, n)
		plain, err = d.Plain(buf, &Block{Codec: codec, PlainLen: uint32(n), Data: out})
		require.NoError(t, err)
		require.True(t, bytes.Equal(text, plain))
		require.Equal(t, &buf[:1][0], &plain[0], "decoded in place")
	}
	rnd := randomBlock(64<<10, 5)
	codec, out := c.Compress(CodecS2, nil, rnd)
	require.Equal(t, CodecNone, codec)
	require.Equal(t, rnd, out)
	codec, out = c.Compress(CodecNone, nil, textBlock(4096, 6))
	require.Equal(t, CodecNone, codec)
	require.Len(t, out, 4096)

	// Saving less than 1/32 is not worth the receiver's decode: 4096
	// random bytes followed by 100 compressible ones shrink by < 128.
	mostly := append(randomBlock(4096, 7), make([]byte, 100)...)
	for _, want := range []uint8{CodecZstd, CodecS2} {
		codec, _ = c.Compress(want, nil, mostly)
		require.Equal(t, CodecNone, codec)
	}
}

// Malformed S2 data is refused before anything is allocated for it: a
// block header claiming another length than the block's plain length (a
// bomb, or a short block), a plain length out of range, and garbage.
func TestDecompressS2Refuses(t *testing.T) {
	_, d := newCodecs(t)
	text := textBlock(4096, 1)
	enc := s2.Encode(nil, text)
	plain := func(data []byte, plainLen uint32) error {
		_, err := d.Plain(nil, &Block{Codec: CodecS2, PlainLen: plainLen, Data: data})
		return err
	}
	require.ErrorIs(t, plain(enc, 4095), protocol.ErrInvalid, "claims more than the block")
	require.ErrorIs(t, plain(enc, 4097), protocol.ErrInvalid, "claims less than the block")
	require.ErrorIs(t, plain(enc, MaxBlockSize+1), protocol.ErrTooLarge)
	require.ErrorIs(t, plain([]byte("not s2 at all"), 4096), protocol.ErrInvalid)
	require.ErrorIs(t, plain(nil, 4096), protocol.ErrInvalid)
	// The right header over a truncated or corrupted body.
	require.ErrorIs(t, plain(enc[:len(enc)-3], 4096), protocol.ErrInvalid)
	bad := bytes.Clone(enc)
	for i := 2; i < len(bad); i += 7 {
		bad[i] ^= 0xa5
	}
	require.ErrorIs(t, plain(bad, 4096), protocol.ErrInvalid)

	// A header claiming 256 MiB allocates nothing of that size.
	bomb := []byte{0x80, 0x80, 0x80, 0x80, 0x01, 0x00}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	require.ErrorIs(t, plain(bomb, 4096), protocol.ErrInvalid)
	runtime.ReadMemStats(&after)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20))
}

func TestCodecConcurrent(t *testing.T) {
	c, d := newCodecs(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Go(func() {
			var cbuf, pbuf []byte
			for i := 0; i < 20; i++ {
				src := textBlock(16<<10, uint64(g*100+i))
				var codec uint8
				codec, cbuf = c.Compress(CodecZstd, cbuf, src)
				if codec != CodecZstd {
					errs <- protocol.Errorf(protocol.CodeInternal, "text did not compress")
					return
				}
				var err error
				pbuf, err = d.Decompress(pbuf, cbuf, len(src))
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(src, pbuf) {
					errs <- protocol.Errorf(protocol.CodeInternal, "round trip differs")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// A small compressed input that claims or produces more than the block's
// plain length is refused without allocating what it would expand to.
func TestDecompressRefusesBombs(t *testing.T) {
	_, d := newCodecs(t)
	plain, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithWindowSize(8<<20))
	require.NoError(t, err)
	defer plain.Close()

	huge := plain.EncodeAll(make([]byte, 64<<20), nil) // 64 MiB of zeros in a few KiB
	require.Less(t, len(huge), 64<<10)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err = d.Decompress(nil, huge, 4096)
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, protocol.ErrInvalid)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(8<<20), "allocated far less than the 64 MiB the input expands to")

	// The plain length itself is bounded.
	_, err = d.Decompress(nil, huge, 64<<20)
	require.ErrorIs(t, err, protocol.ErrTooLarge)

	// Output that is shorter than announced is refused too.
	short := plain.EncodeAll(textBlock(1000, 1), nil)
	_, err = d.Decompress(nil, short, 2000)
	require.ErrorIs(t, err, protocol.ErrInvalid)
	// Garbage.
	_, err = d.Decompress(nil, []byte("not zstd at all"), 100)
	require.ErrorIs(t, err, protocol.ErrInvalid)
}

func BenchmarkCompress64K(b *testing.B) {
	c, _ := newCodecs(b)
	src := textBlock(64<<10, 1)
	dst := make([]byte, 0, 64<<10)
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		_, dst = c.Compress(CodecZstd, dst, src)
	}
}

func BenchmarkCompressS2_64K(b *testing.B) {
	c, _ := newCodecs(b)
	src := textBlock(64<<10, 1)
	var dst []byte
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		_, dst = c.Compress(CodecS2, dst, src)
	}
}

func BenchmarkBatchDecode(b *testing.B) {
	batch := &Batch{Cycle: 1}
	data := textBlock(64<<10, 1)
	for i := 0; i < 256; i++ {
		batch.Blocks = append(batch.Blocks, Block{Block: uint64(i), Hash: Hash{byte(i)}, PlainLen: uint32(len(data)), Data: data})
	}
	enc := batch.Append(nil)
	var got Batch
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		if err := got.Decode(enc); err != nil {
			b.Fatal(err)
		}
	}
}
