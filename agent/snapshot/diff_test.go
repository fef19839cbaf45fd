package snapshot

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDiffExtentsPure(t *testing.T) {
	const size = 1 << 20
	a := []PhysExtent{{Logical: 0, Physical: 1000000, Length: size}}
	// b shares everything but a 4 KiB piece rewritten elsewhere, and an
	// unknown-flagged piece.
	b := []PhysExtent{
		{Logical: 0, Physical: 1000000, Length: 8192},
		{Logical: 8192, Physical: 5000000, Length: 4096},
		{Logical: 12288, Physical: 1000000 + 12288, Length: 500000 - 12288},
		{Logical: 500000, Physical: 1000000 + 500000, Length: 4096, Flags: FlagUnknown},
		{Logical: 504096, Physical: 1000000 + 504096, Length: size - 504096 - 65536},
	}
	got := DiffExtents(a, b, size)
	require.Equal(t, []Range{
		{Offset: 8192, Length: 4096},
		{Offset: 500000, Length: 4096},
		{Offset: size - 65536, Length: 65536}, // data in a, hole in b
	}, got)
	require.Empty(t, DiffExtents(a, a, size))
	require.Empty(t, DiffExtents(nil, nil, size))
	require.Equal(t, []Range{{Offset: 0, Length: size}}, DiffExtents(nil, a, size))
	require.Equal(t, []int64{0, 7, 15}, BlocksOf(got, 65536))
	require.Equal(t, []int64{0, 1}, BlocksOf([]Range{{Offset: 65535, Length: 2}}, 65536))
}
