package storage

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestVerifyPacesEachChunkOnce: a pass announces how many chunks it will
// read and paces every chunk read with its stored length, once per pass
// even when several points (and blocks) read the same chunk; the pacer's
// error ends the pass. The point audit's rate limit and progress rest on
// this.
func TestVerifyPacesEachChunkOnce(t *testing.T) {
	ctx := context.Background()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	a, b := content(21, possBlock), content(22, possBlock)
	commitBlocks(t, r, "m", chunkWrite("d", 0, a), chunkWrite("d", 1, b))
	commitBlocks(t, r, "m", chunkWrite("d", 2, a)) // a third block reading a
	commitBlocks(t, r, "m", chunkWrite("d", 3, b)) // and a fourth reading b

	planned, calls := -1, 0
	var paced int64
	rep, err := r.Verify(ctx, VerifyOptions{ReadData: true,
		Plan: func(n int) { planned = n },
		Pace: func(_ context.Context, n int64) error { calls++; paced += n; return nil }})
	require.NoError(t, err)
	require.Empty(t, rep.Damaged)
	require.Equal(t, 2, planned, "two distinct chunks")
	require.Equal(t, 2, calls, "each chunk is read once per pass")
	require.Equal(t, rep.Bytes, paced, "the pacer sees every byte read")
	require.Equal(t, int64(2), rep.Chunks)

	stop := errors.New("stop")
	calls = 0
	_, err = r.Verify(ctx, VerifyOptions{Pace: func(context.Context, int64) error { calls++; return stop }})
	require.ErrorIs(t, err, stop)
	require.Equal(t, 1, calls, "the pass ends at the pacer's error")
}
