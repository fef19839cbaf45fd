package agent

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ferrydr/ferry/agent/bdtrack"
	"github.com/ferrydr/ferry/agent/track"
)

func TestDirtyRangesCoalesceRuns(t *testing.T) {
	d := bdtrack.Dirty{BlockSize: 4096, Words: []uint64{0b1110_0001, 1 << 63, 1}}
	require.Equal(t, []track.Range{
		{Offset: 0, Length: 4096},
		{Offset: 5 * 4096, Length: 3 * 4096},
		{Offset: 127 * 4096, Length: 2 * 4096}, // bit 63 of word 1 and bit 0 of word 2
	}, dirtyRanges(d))
	require.Empty(t, dirtyRanges(bdtrack.Dirty{BlockSize: 4096, Words: make([]uint64, 4)}))
}

func TestBlockStateRoundTrips(t *testing.T) {
	s := blockState{base: 42, lost: "a request was too large", pending: bdtrack.Dirty{BlockSize: 65536, Words: []uint64{0, 5, 0, 0, 1 << 40}}}
	got, err := decodeBlockState(s.encode(), 65536)
	require.NoError(t, err)
	require.Equal(t, s.base, got.base)
	require.Equal(t, s.lost, got.lost)
	require.Equal(t, s.pending.Blocks(), got.pending.Blocks())

	// Another block size, a truncated file or another version is refused.
	_, err = decodeBlockState(s.encode(), 4096)
	require.ErrorContains(t, err, "block size")
	b := s.encode()
	_, err = decodeBlockState(b[:len(b)-1], 65536)
	require.Error(t, err)
	b[8] = 9
	_, err = decodeBlockState(b, 65536)
	require.ErrorContains(t, err, "version")
}

// The v1 fixture, written from the layout docs/replication.md §5.2c
// gives (not by this encoder), decodes, and encodes back byte for byte.
func TestBlockStateV1Fixture(t *testing.T) {
	b, err := os.ReadFile("testdata/bdtrack-state-v1.bin")
	require.NoError(t, err)
	s, err := decodeBlockState(b, 65536)
	require.NoError(t, err)
	require.Equal(t, int64(42), s.base)
	require.Equal(t, "a request was too large", s.lost)
	require.Equal(t, []uint64{64, 66, 4*64 + 40}, s.pending.Blocks())
	require.Equal(t, b, s.encode())
}
