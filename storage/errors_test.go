package storage

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// TestWriteErrors covers the write path's error contract.
func TestWriteErrors(t *testing.T) {
	ctx := context.Background()
	key, err := GenerateKey()
	require.NoError(t, err)
	r, _ := newTestRepo(t, CreateOptions{PublicKey: key.Public()}, OpenOptions{})
	p, err := r.BeginPoint(ctx, "m", []DiskSpec{{Name: "d", Size: 4 * tbs, BlockSize: tbs}})
	require.NoError(t, err)

	// A hash-only write of a chunk that is not stored.
	missing := Hash(blake3.Sum256([]byte("never stored")))
	err = p.Write(ctx, []BlockWrite{{Disk: "d", Block: 0, Hash: missing}})
	require.ErrorIs(t, err, ErrChunkMissing)

	// A chunk whose bytes do not match its hash.
	w := chunkWrite("d", 0, content(10, tbs))
	bad := *w.Chunk
	bad.Data = content(13, tbs)
	w.Chunk = &bad
	require.ErrorIs(t, p.Write(ctx, []BlockWrite{w}), ErrHashMismatch)

	// A patch in an encrypted repository needs the private key...
	require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("d", 1, content(16, tbs))}))
	base := content(16, tbs)
	patched := append([]byte(nil), base...)
	copy(patched[10:], "patched!")
	pw := BlockWrite{Disk: "d", Block: 1, Hash: Hash(blake3.Sum256(patched)), Patch: []PatchRun{{Offset: 10, Data: []byte("patched!")}}}
	require.ErrorIs(t, p.Write(ctx, []BlockWrite{pw}), ErrKeyRequired)
	// ...and works through a keyed view.
	keyed, err := r.WithPrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, p.WithRepo(keyed).Write(ctx, []BlockWrite{pw}))

	// Unknown disk, block outside the disk, bad consistency.
	require.ErrorIs(t, p.Write(ctx, []BlockWrite{{Disk: "nope", Block: 0, Zero: true}}), ErrNotFound)
	require.Error(t, p.Write(ctx, []BlockWrite{{Disk: "d", Block: 4, Zero: true}}))
	_, err = p.Commit(ctx, CommitInfo{Consistency: "sort-of"})
	require.Error(t, err)

	pt, err := p.Commit(ctx, CommitInfo{Consistency: Inconsistent})
	require.NoError(t, err)
	require.Equal(t, int64(1), pt.Changed)
	d, err := keyed.OpenDisk(ctx, pt.ID, "d")
	require.NoError(t, err)
	got, err := d.ReadBlock(ctx, 1)
	require.NoError(t, err)
	require.Equal(t, patched, got)
	h, zero, err := d.BlockHash(ctx, 0)
	require.NoError(t, err)
	require.True(t, zero)
	require.Equal(t, Hash{}, h)

	// The committed point is no longer pending.
	require.ErrorIs(t, p.Write(ctx, []BlockWrite{{Disk: "d", Block: 0, Zero: true}}), ErrNotFound)
	_, err = r.PendingPoint(ctx, "m")
	require.ErrorIs(t, err, ErrNotFound)

	// A patch whose result does not match its hash fails its point at the
	// commit (docs/storage-format.md "Patch records"), which drops it.
	p2, err := keyed.BeginPoint(ctx, "m", []DiskSpec{{Name: "d", Size: 4 * tbs, BlockSize: tbs}})
	require.NoError(t, err)
	pw.Hash = Hash(blake3.Sum256(base))
	require.NoError(t, p2.Write(ctx, []BlockWrite{pw}))
	_, err = p2.Commit(ctx, CommitInfo{Consistency: Inconsistent})
	require.ErrorIs(t, err, ErrHashMismatch)
	_, err = r.PendingPoint(ctx, "m")
	require.ErrorIs(t, err, ErrNotFound)
	require.NoError(t, r.Close())
	_, err = r.Points(ctx, "m")
	require.ErrorIs(t, err, ErrClosed)
}
