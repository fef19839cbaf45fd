package data

import (
	"bytes"
	"testing"

	"github.com/ferrydr/ferry/protocol"
	"github.com/stretchr/testify/require"
)

func TestPatch(t *testing.T) {
	runs := []PatchRun{{Offset: 0, Data: []byte("ab")}, {Offset: 4096, Data: bytes.Repeat([]byte{7}, 4096)}, {Offset: 65535, Data: []byte{1}}}
	require.NoError(t, ValidatePatch(runs))
	enc := EncodePatch(runs...)
	require.Equal(t, PatchSize(runs), len(enc))
	require.Equal(t, []byte{0, 0, 0, 0, 0, 0, 0, 2, 'a', 'b'}, enc[:10], "[u32 offset][u32 length][bytes]")
	got, err := DecodePatch(enc)
	require.NoError(t, err)
	require.Equal(t, runs, got)

	block := make([]byte, 65536)
	require.NoError(t, ApplyPatch(block, got))
	require.Equal(t, []byte("ab"), block[:2])
	require.Equal(t, byte(7), block[8191])
	require.Equal(t, byte(0), block[8192])
	require.Equal(t, byte(1), block[65535])

	small := make([]byte, 4096)
	require.ErrorIs(t, ApplyPatch(small, got), protocol.ErrInvalid)
	require.Equal(t, make([]byte, 4096), small, "a patch that does not fit leaves the block untouched")

	for name, bad := range map[string][]PatchRun{
		"empty run":  {{Offset: 0, Data: nil}},
		"overlap":    {{Offset: 0, Data: []byte("abc")}, {Offset: 2, Data: []byte("x")}},
		"unordered":  {{Offset: 10, Data: []byte("a")}, {Offset: 0, Data: []byte("b")}},
		"past limit": {{Offset: MaxBlockSize - 1, Data: []byte("ab")}},
	} {
		require.ErrorIs(t, ValidatePatch(bad), protocol.ErrInvalid, name)
		_, err := DecodePatch(EncodePatch(bad...))
		require.ErrorIs(t, err, protocol.ErrInvalid, name)
	}
	_, err = DecodePatch(nil)
	require.ErrorIs(t, err, protocol.ErrInvalid)
	_, err = DecodePatch(enc[:len(enc)-1])
	require.ErrorIs(t, err, protocol.ErrInvalid)
	require.ErrorIs(t, ValidatePatch([]PatchRun{{Data: make([]byte, MaxBlockSize)}}), protocol.ErrTooLarge)
}
