package storage

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// Diff resolves its candidate blocks in pages (diffPage per query): across
// page boundaries it must still list exactly the blocks whose content
// differs, in order, with their content at the second point, and its
// function may query the index (the single connection is free by then).
func TestDiffAcrossPagesMatchesTheModel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, _ := newTestRepo(t, CreateOptions{}, OpenOptions{})
	const nblocks = 2*diffPage + 300
	disks := []DiskSpec{{Name: "d", Size: nblocks * tbs, BlockSize: tbs}}
	commit := func(ws []BlockWrite) Point {
		p, err := r.BeginPoint(ctx, "m", disks)
		require.NoError(t, err)
		require.NoError(t, p.Write(ctx, ws))
		pt, err := p.Commit(ctx, CommitInfo{Instant: time.Now(), Consistency: CrashConsistent})
		require.NoError(t, err)
		return pt
	}
	// Point 1 writes every block but the last 100 (never written). Point 2
	// rewrites every third block with new content, every fifth with zeros,
	// every seventh with the content it had (a row, but no change), and
	// writes half of the never-written tail.
	before, after := make([]byte, nblocks*tbs), make([]byte, nblocks*tbs)
	var w1, w2 []BlockWrite
	for b := range int64(nblocks - 100) {
		c := content(uint64(3*b+1), tbs) // seed%3 == 1: random bytes, never zero
		copy(before[b*tbs:], c)
		w1 = append(w1, chunkWrite("d", b, c))
	}
	copy(after, before)
	for b := range int64(nblocks) {
		var c []byte
		switch {
		case b >= nblocks-100 && b%2 == 0:
			c = content(uint64(3*b+nblocks*3+1), tbs)
		case b >= nblocks-100:
			continue
		case b%5 == 0:
			c = make([]byte, tbs)
		case b%3 == 0:
			c = content(uint64(3*b+nblocks*3+1), tbs)
		case b%7 == 0:
			c = before[b*tbs : (b+1)*tbs]
		default:
			continue
		}
		copy(after[b*tbs:], c)
		w2 = append(w2, chunkWrite("d", b, c))
	}
	p1, p2 := commit(w1), commit(w2)

	for _, tc := range []struct {
		name     string
		from, to int64
		old, new []byte
	}{
		{"forwards", p1.ID, p2.ID, before, after},
		{"backwards", p2.ID, p1.ID, after, before},
		{"from the empty disk", 0, p2.ID, make([]byte, nblocks*tbs), after},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []int64
			for b := range int64(nblocks) {
				if !bytes.Equal(tc.old[b*tbs:(b+1)*tbs], tc.new[b*tbs:(b+1)*tbs]) {
					want = append(want, b)
				}
			}
			require.Greater(t, len(want), diffPage, "the diff must span pages")
			var got []int64
			require.NoError(t, r.Diff(ctx, "m", "d", tc.from, tc.to, func(b int64, h Hash, zero bool) error {
				got = append(got, b)
				blk := tc.new[b*tbs : (b+1)*tbs]
				if zero {
					require.True(t, isZero(blk), "block %d listed as zero", b)
				} else {
					require.Equal(t, Hash(blake3.Sum256(blk)), h, "block %d", b)
				}
				// The index is free while fn runs (one connection).
				_, err := r.Point(ctx, p1.ID)
				return err
			}))
			require.Equal(t, want, got)
		})
	}
}
