package storage

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRepoPathWithURICharacters: a repository directory whose name holds
// '#', '?' or '%' keeps its index inside it (the SQLite URI would end the
// path at '#' or '?' and decode '%41').
func TestRepoPathWithURICharacters(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "r#x?y%41z")
	ctx := context.Background()
	co := DefaultCreateOptions()
	co.PackSize = MinPackSize
	require.NoError(t, Create(ctx, dir, co))
	r, err := Open(ctx, dir, OpenOptions{Logger: testLogger(t)})
	require.NoError(t, err)
	require.NoError(t, r.Close())
	_, err = os.Stat(filepath.Join(dir, indexName))
	require.NoError(t, err, "the index is inside the repository")
	entries, err := os.ReadDir(base)
	require.NoError(t, err)
	require.Len(t, entries, 1, "nothing created beside the repository: %v", entries)
}
