package e2e

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Recovered disks are compared with bytes the test kept itself — a copy
// of the source taken while nothing wrote to it, or a model kept in step
// with the writer — never with Ferry's own export of the same point, which
// would share any defect of the reads both go through.

// keepCopy copies a source image into the test's temp dir while nothing
// writes to it, and returns the copy's path.
func keepCopy(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(src)+".kept")
	in, err := os.Open(src)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.Create(dst)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
	return dst
}

// writeInChunks writes data at offset 0 of path in chunk-sized WriteAt
// calls, in order (never truncating: a cycle may be reading the image).
func writeInChunks(t *testing.T, path string, data []byte, chunk int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	for off := 0; off < len(data); off += chunk {
		_, err := f.WriteAt(data[off:min(off+chunk, len(data))], int64(off))
		require.NoError(t, err)
	}
	require.NoError(t, f.Close())
}

// requireChunkPrefix requires the file at got to be the image before a
// chunked rewrite with exactly its first n chunks applied (after holds the
// image with all of them), for some n, and returns n: a crash-consistent
// point of a source rewritten by writeInChunks is one of these states and
// never a mix.
func requireChunkPrefix(t *testing.T, got string, before, after []byte, chunk int) int {
	t.Helper()
	b, err := os.ReadFile(got)
	require.NoError(t, err)
	require.Equal(t, len(before), len(b), "size of %s", got)
	n := 0
	for n*chunk < len(b) && bytes.Equal(b[n*chunk:min((n+1)*chunk, len(b))], after[n*chunk:min((n+1)*chunk, len(after))]) {
		n++
	}
	off := min(n*chunk, len(b))
	require.True(t, bytes.Equal(b[off:], before[off:]),
		"%s is not the image before the rewrite plus any prefix of its chunks (the first %d chunks match the new content)", got, n)
	return n
}
