package storage

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// TestPatchesAcrossPagesReadTheirBases: one Write of patches to 2,100
// blocks (three pages of base lookups) applies each to its own base: the
// pending point's own row, the newest committed row, an explicit zero row,
// or nothing ever written; then 600 hash-only writes of stored chunks
// (three lookup batches) all dedup. Every block reads back as the test's
// own model says.
func TestPatchesAcrossPagesReadTheirBases(t *testing.T) {
	ctx := context.Background()
	const blocks = 2100
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	disks := []DiskSpec{{Name: "d", Size: blocks * tbs, BlockSize: tbs}}
	model := make([][]byte, blocks)
	for b := range model {
		model[b] = make([]byte, tbs)
	}
	write := func(p *Pending, ws []BlockWrite) {
		for len(ws) > 0 {
			n := min(len(ws), 3000)
			require.NoError(t, p.Write(ctx, ws[:n]))
			ws = ws[n:]
		}
	}

	// Point 1: content on blocks ≡ 0 mod 3, explicit zeros on ≡ 1 mod 3,
	// nothing on ≡ 2 mod 3.
	p, err := r.BeginPoint(ctx, "m", disks)
	require.NoError(t, err)
	var ws []BlockWrite
	for b := 0; b < blocks; b++ {
		switch b % 3 {
		case 0:
			model[b] = content(uint64(10_000+b), tbs)
			ws = append(ws, chunkWrite("d", int64(b), model[b]))
		case 1:
			ws = append(ws, BlockWrite{Disk: "d", Block: int64(b), Zero: true})
		}
	}
	write(p, ws)
	first, err := p.Commit(ctx, CommitInfo{Instant: time.Now(), Consistency: CrashConsistent})
	require.NoError(t, err)

	// Point 2: its own rows on blocks ≡ 0 mod 7 first, then a patch on
	// every block.
	p, err = r.BeginPoint(ctx, "m", disks)
	require.NoError(t, err)
	ws = nil
	for b := 0; b < blocks; b += 7 {
		model[b] = content(uint64(20_000+b), tbs)
		ws = append(ws, chunkWrite("d", int64(b), model[b]))
	}
	write(p, ws)
	ws = nil
	for b := 0; b < blocks; b++ {
		run := []byte(fmt.Sprintf("patch of block %d", b))
		off := (b * 37) % (tbs - len(run))
		copy(model[b][off:], run)
		ws = append(ws, BlockWrite{Disk: "d", Block: int64(b), Hash: Hash(blake3.Sum256(model[b])),
			Patch: []PatchRun{{Offset: off, Data: run}}})
	}
	write(p, ws)
	// Hash-only writes of point 1's content, stored already.
	d1, err := r.OpenDisk(ctx, first.ID, "d")
	require.NoError(t, err)
	ws = nil
	for b := 0; b < blocks && len(ws) < 600; b += 3 {
		old, err := d1.ReadBlock(ctx, int64(b))
		require.NoError(t, err)
		target := blocks - 1 - b
		model[target] = old
		ws = append(ws, BlockWrite{Disk: "d", Block: int64(target), Hash: Hash(blake3.Sum256(old))})
	}
	require.Len(t, ws, 600)
	write(p, ws)
	second, err := p.Commit(ctx, CommitInfo{Instant: time.Now(), Consistency: CrashConsistent})
	require.NoError(t, err)

	d2, err := r.OpenDisk(ctx, second.ID, "d")
	require.NoError(t, err)
	for b := 0; b < blocks; b++ {
		got, err := d2.ReadBlock(ctx, int64(b))
		require.NoError(t, err)
		require.True(t, bytes.Equal(model[b], got), "block %d", b)
	}
}
