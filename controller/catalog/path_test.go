package catalog

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestOpenPathWithURICharacters: a data directory whose name holds '#',
// '?' or '%' (legal in file names) still opens the catalog at exactly the
// path given — not at a file named by the part before the '#', outside
// the directory, which the repository index then opened too.
func TestOpenPathWithURICharacters(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a#b?c%41d")
	require.NoError(t, os.Mkdir(dir, 0o700))
	file := filepath.Join(dir, "catalog.db")
	c, err := Open(context.Background(), file, nil)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	_, err = os.Stat(file)
	require.NoError(t, err, "the catalog is where it was asked to be")
	entries, err := os.ReadDir(base)
	require.NoError(t, err)
	require.Len(t, entries, 1, "nothing created beside the data directory: %v", entries)
}
