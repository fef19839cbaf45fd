package ship_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
	"golang.org/x/time/rate"

	"github.com/ferrydr/ferry/agent/ship"
	"github.com/ferrydr/ferry/protocol"
	"github.com/ferrydr/ferry/protocol/data"
)

// wordFill makes a disk that both codecs shrink, zstd several times more
// than S2: 8-byte words drawn from sixteen.
func wordFill(i int) byte {
	w := fillWords[uint32(i/8)*2654435761>>28]
	if i%8 < len(w) {
		return w[i%8]
	}
	return ' '
}

var fillWords = strings.Fields("replica block agent disk point control failover points map hash pack seal wire zstd snap view")

// throttled is a link of rate bytes per second on the agent's side: its
// writes wait as writes into a slow link's full window do.
type throttled struct {
	io.ReadWriteCloser
	lim *rate.Limiter
}

func (s throttled) Write(p []byte) (int, error) {
	for left := len(p); left > 0; {
		n := min(left, s.lim.Burst())
		if err := s.lim.WaitN(context.Background(), n); err != nil {
			return 0, err
		}
		left -= n
	}
	return s.ReadWriteCloser.Write(p)
}

// codecRun ships an n-block wordFill disk over l, each stream opened
// through wrap, to a controller that needs every block, checks each
// against the disk and counts the codecs it arrived in.
func codecRun(t *testing.T, l *link, n int, cfg func(*ship.Config), wrap func(io.ReadWriteCloser) io.ReadWriteCloser) (ship.Result, map[uint8]int) {
	t.Helper()
	b, m, zc := bigDisk(t, n, wordFill)
	c := ship.Config{
		Cycle: cycleID, Streams: 1, Hashers: 2, Compressor: zc,
		Disks: []ship.Disk{{Index: 0, Reader: bytes.NewReader(b), Size: int64(len(b)), BlockSize: blockSize, Map: m, Candidates: allOf(n)}},
		Open: func(ctx context.Context) (io.ReadWriteCloser, error) {
			st, err := l.agent.Open(ctx, protocol.KindData)
			if err != nil || wrap == nil {
				return st, err
			}
			return wrap(st), nil
		},
	}
	cfg(&c)
	done := run(c)
	cs := l.accept(t)
	require.NotNil(t, cs)
	codecs := map[uint8]int{}
	cs.needAll(t, n, func(blk data.Block) {
		codecs[blk.Codec]++
		plain, err := cs.dec.Plain(nil, &blk)
		require.NoError(t, err)
		require.Equal(t, blk.Hash, data.Hash(blake3.Sum256(plain)))
		require.True(t, bytes.Equal(b[blk.Block*blockSize:(blk.Block+1)*blockSize], plain), "block %d", blk.Block)
	})
	r := wait(t, done)
	require.NoError(t, r.err)
	return r.res, codecs
}

func allOf(n int) func(yield func(ship.Candidate) bool) {
	return func(yield func(ship.Candidate) bool) {
		for b := range int64(n) {
			if !yield(ship.Candidate{Block: b}) {
				return
			}
		}
	}
}

// On a slow link the auto choice starts with S2, finds the stream waiting
// on the link far longer than 4× the compression time (the first 8 MiB
// window is about 600 KB of S2, 1.2 s at 512 KiB/s; S2 makes it in a few
// ms, 170 ms at worst seen under -race on two busy cores) and sends the
// rest, 8 MiB more, as zstd.
func TestShipAutoCodecPicksZstdOnASlowLink(t *testing.T) {
	const n = 16 << 20 / blockSize
	l := newLink(t)
	res, codecs := codecRun(t, l, n, func(c *ship.Config) { c.S2 = true },
		func(st io.ReadWriteCloser) io.ReadWriteCloser {
			return throttled{st, rate.NewLimiter(512<<10, 32<<10)}
		})
	t.Logf("result %+v, blocks by codec %v", res, codecs)
	require.Equal(t, "zstd", res.Codec)
	require.Equal(t, int64(1), res.CodecSwitches)
	require.Equal(t, 8<<20/blockSize, codecs[data.CodecS2], "the first window is S2")
	require.Equal(t, n-8<<20/blockSize, codecs[data.CodecZstd])
	require.Positive(t, res.CodecBytes.S2)
	require.Positive(t, res.CodecBytes.Zstd)
	require.Zero(t, res.CodecBytes.None)
}

// On a fast in-memory link (loopback TLS, a controller that only acks)
// the auto choice keeps S2: the send waits far less than 4× what S2
// takes to compress.
func TestShipAutoCodecKeepsS2OnAFastLink(t *testing.T) {
	const n = 16 << 20 / blockSize
	l := newLink(t)
	res, codecs := codecRun(t, l, n, func(c *ship.Config) { c.S2 = true }, nil)
	require.Equal(t, "s2", res.Codec)
	require.Zero(t, res.CodecSwitches)
	require.Equal(t, n, codecs[data.CodecS2])
	require.Equal(t, res.CodecBytes, ship.CodecBytes{S2: res.CodecBytes.S2})
}

// A fixed codec is obeyed whatever the link, and a controller that does
// not offer S2 (its begin response lacks codecs: an older controller)
// gets none and zstd only, whatever the agent was told.
func TestShipFixedCodecAndOlderController(t *testing.T) {
	const n = 512
	for _, tc := range []struct {
		choice ship.CodecChoice
		s2     bool
		want   uint8
	}{
		{ship.CodecZstd, true, data.CodecZstd},
		{ship.CodecS2, true, data.CodecS2},
		{ship.CodecNone, true, data.CodecNone},
		{ship.CodecS2, false, data.CodecZstd},
		{ship.CodecAuto, false, data.CodecZstd},
	} {
		l := newLink(t)
		res, codecs := codecRun(t, l, n, func(c *ship.Config) { c.Codec, c.S2 = tc.choice, tc.s2 }, nil)
		require.Equal(t, map[uint8]int{tc.want: n}, codecs, "%s, s2 offered %v", tc.choice, tc.s2)
		require.Zero(t, res.CodecSwitches)
	}
}
