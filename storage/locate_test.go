package storage

import (
	"context"
	"io/fs"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Locate finds stored chunks in one query and leaves out the rest;
// EnvelopeAt reads what ChunkEnvelope reads, also after GC moved the
// chunk to another pack since it was located.
func TestLocateThenEnvelopeAtSurvivesARepack(t *testing.T) {
	ctx := context.Background()
	// Small packs: the first point's chunks fill and seal one (GC repacks
	// only sealed packs).
	r, _ := newTestRepo(t, CreateOptions{PackSize: MinPackSize}, OpenOptions{})
	const nblocks = 24
	disks := []DiskSpec{{Name: "d", Size: nblocks * tbs, BlockSize: tbs}}
	commit := func(at int64, ws ...BlockWrite) {
		p, err := r.BeginPoint(ctx, "m", disks)
		require.NoError(t, err)
		require.NoError(t, p.Write(ctx, ws))
		_, err = p.Commit(ctx, CommitInfo{Instant: time.Unix(at, 0), Consistency: CrashConsistent})
		require.NoError(t, err)
	}
	var ws []BlockWrite
	for b := range int64(nblocks) {
		ws = append(ws, chunkWrite("d", b, content(uint64(3*b+1), tbs)))
	}
	commit(1, ws...)
	kept := ws[0].Hash
	unknown := Hash{1, 2, 3}

	locs, err := r.Locate(ctx, []Hash{kept, ws[1].Hash, unknown})
	require.NoError(t, err)
	require.Len(t, locs, 2, "the unknown hash has no location")
	want, err := r.ChunkEnvelope(ctx, kept)
	require.NoError(t, err)
	got, err := r.EnvelopeAt(ctx, locs[kept])
	require.NoError(t, err)
	require.Equal(t, want, got)

	// Every other block zeroed and the first point pruned: block 0's chunk
	// is the only live one of its pack, which GC repacks.
	var zeros []BlockWrite
	for b := range int64(nblocks - 1) {
		zeros = append(zeros, chunkWrite("d", b+1, make([]byte, tbs)))
	}
	commit(2, zeros...)
	_, err = r.Prune(ctx, "m", time.Unix(2, 0))
	require.NoError(t, err)
	_, err = r.GC(ctx, GCOptions{RepackBelow: 0.9})
	require.NoError(t, err)
	_, err = r.c.readChunkRecord(locs[kept].row)
	require.ErrorIs(t, err, fs.ErrNotExist, "precondition: the located pack is gone")

	got, err = r.EnvelopeAt(ctx, locs[kept])
	require.NoError(t, err)
	require.Equal(t, want.Data, got.Data)
	require.Equal(t, want.Hash, got.Hash)
}
