package admin

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSparseRoundTrip(t *testing.T) {
	const size = 8<<20 + 123
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	var buf bytes.Buffer
	sw := NewSparseWriter(&buf)
	for _, off := range []int64{0, 1 << 20, 5<<20 + 7} {
		chunk := make([]byte, 100_000)
		for i := range chunk {
			chunk[i] = byte(rng.Uint32())
		}
		copy(want[off:], chunk)
		_, err := sw.WriteAt(chunk, off)
		require.NoError(t, err)
	}
	require.NoError(t, sw.Close(size))

	f, err := os.Create(filepath.Join(t.TempDir(), "disk.raw"))
	require.NoError(t, err)
	defer f.Close()
	n, err := ReadSparse(bytes.NewReader(buf.Bytes()), f)
	require.NoError(t, err)
	require.Equal(t, int64(size), n)
	got, err := os.ReadFile(f.Name())
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got))

	// Every cut short of the end record is detected.
	for _, cut := range []int{0, 1, 13, buf.Len() / 2, buf.Len() - 1} {
		g, err := os.Create(filepath.Join(t.TempDir(), "cut.raw"))
		require.NoError(t, err)
		_, err = ReadSparse(bytes.NewReader(buf.Bytes()[:cut]), g)
		require.ErrorIs(t, err, ErrTruncatedExport, "cut at %d", cut)
		g.Close()
	}
	_, err = ReadSparse(bytes.NewReader([]byte{'X'}), f)
	require.Error(t, err)
}
