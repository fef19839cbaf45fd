package storage

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

const tbs = 4096

func TestWriteCommitRead(t *testing.T) {
	for _, enc := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "encrypted"}[enc], func(t *testing.T) {
			ctx := context.Background()
			var co CreateOptions
			var oo OpenOptions
			var key *PrivateKey
			if enc {
				var err error
				key, err = GenerateKey()
				require.NoError(t, err)
				co.PublicKey = key.Public()
				oo.PrivateKey = key
			}
			clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			oo.Clock = clk.now
			r, _ := newTestRepo(t, co, oo)
			disks := []DiskSpec{{Name: "sda", Size: 16 * tbs, BlockSize: tbs}}
			model := make([]byte, 16*tbs)
			var pts []Point
			var snaps [][]byte
			for k := 1; k <= 5; k++ {
				p, err := r.BeginPoint(ctx, "m1", disks)
				require.NoError(t, err)
				var ws []BlockWrite
				for i := 0; i < 4; i++ {
					b := int64((k*7 + i*3) % 16)
					data := content(uint64(k*100+i), tbs)
					copy(model[b*tbs:], data)
					ws = append(ws, chunkWrite("sda", b, data))
				}
				require.NoError(t, p.Write(ctx, ws))
				pt, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(int64(1000+k), 0), Consistency: CrashConsistent})
				require.NoError(t, err)
				pts = append(pts, pt)
				snaps = append(snaps, append([]byte(nil), model...))
			}
			for i, pt := range pts {
				d, err := r.OpenDisk(ctx, pt.ID, "sda")
				require.NoError(t, err)
				var buf bytes.Buffer
				_, err = d.WriteTo(&buf)
				require.NoError(t, err)
				require.Equal(t, snaps[i], buf.Bytes(), "point %d stream", i)
				got := make([]byte, len(snaps[i]))
				_, err = d.ReadAt(got, 0)
				require.True(t, err == nil || errors.Is(err, io.EOF))
				require.Equal(t, snaps[i], got, "point %d ReadAt", i)
			}
			at, err := r.PointAt(ctx, "m1", time.Unix(1003, 500))
			require.NoError(t, err)
			require.Equal(t, pts[2].ID, at.ID)

			// Diff between point 1 and 4 equals the blocks that differ.
			var diff []int64
			require.NoError(t, r.Diff(ctx, "m1", "sda", pts[0].ID, pts[3].ID, func(b int64, h Hash, zero bool) error {
				diff = append(diff, b)
				want := snaps[3][b*tbs : (b+1)*tbs]
				if zero {
					require.True(t, isZero(want))
				} else {
					require.Equal(t, Hash(blake3.Sum256(want)), h)
				}
				return nil
			}))
			var wantDiff []int64
			for b := int64(0); b < 16; b++ {
				if !bytes.Equal(snaps[0][b*tbs:(b+1)*tbs], snaps[3][b*tbs:(b+1)*tbs]) {
					wantDiff = append(wantDiff, b)
				}
			}
			require.Equal(t, wantDiff, diff)

			// Backwards: the blocks that differ, with their content at the
			// older point; and from the empty disk.
			var back []int64
			require.NoError(t, r.Diff(ctx, "m1", "sda", pts[3].ID, pts[0].ID, func(b int64, h Hash, zero bool) error {
				back = append(back, b)
				want := snaps[0][b*tbs : (b+1)*tbs]
				if zero {
					require.True(t, isZero(want))
				} else {
					require.Equal(t, Hash(blake3.Sum256(want)), h)
				}
				return nil
			}))
			require.Equal(t, wantDiff, back)
			var fromEmpty []int64
			require.NoError(t, r.Diff(ctx, "m1", "sda", 0, pts[1].ID, func(b int64, h Hash, zero bool) error {
				fromEmpty = append(fromEmpty, b)
				return nil
			}))
			// Blocks lists every written block, explicit zeros included; a
			// diff from the empty disk lists the non-zero ones.
			var written, nonZero []int64
			d1, err := r.OpenDisk(ctx, pts[1].ID, "sda")
			require.NoError(t, err)
			require.NoError(t, d1.Blocks(ctx, func(b int64, h Hash, zero bool) error {
				written = append(written, b)
				want := snaps[1][b*tbs : (b+1)*tbs]
				require.Equal(t, isZero(want), zero)
				if !zero {
					nonZero = append(nonZero, b)
				}
				return nil
			}))
			require.Greater(t, len(written), len(nonZero), "the test must include explicit zero blocks")
			require.Equal(t, nonZero, fromEmpty)

			// Delete middle points and the oldest; others read the same.
			require.NoError(t, r.DeletePoint(ctx, pts[2].ID))
			n, err := r.Prune(ctx, "m1", time.Unix(1002, 1))
			require.NoError(t, err)
			require.Equal(t, 2, n)
			_, err = r.GC(ctx, GCOptions{RepackBelow: 0.99})
			require.NoError(t, err)
			for _, i := range []int{3, 4} {
				d, err := r.OpenDisk(ctx, pts[i].ID, "sda")
				require.NoError(t, err)
				var buf bytes.Buffer
				_, err = d.WriteTo(&buf)
				require.NoError(t, err)
				require.Equal(t, snaps[i], buf.Bytes(), "point %d after delete+gc", i)
			}
			_, err = r.OpenDisk(ctx, pts[2].ID, "sda")
			require.ErrorIs(t, err, ErrNotFound)
			rep, err := r.Verify(ctx, VerifyOptions{ReadData: true})
			require.NoError(t, err)
			require.Empty(t, rep.Damaged)
			if enc {
				nokey, err := r.WithPrivateKey(key)
				require.NoError(t, err)
				_ = nokey
				other, _ := GenerateKey()
				_, err = r.WithPrivateKey(other)
				require.ErrorIs(t, err, ErrWrongKey)
			}
		})
	}
}
