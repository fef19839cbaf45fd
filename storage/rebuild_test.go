package storage

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// diskImage reads a whole disk of a point.
func diskImage(t testing.TB, r *Repo, id int64, disk string) []byte {
	t.Helper()
	d, err := r.OpenDisk(context.Background(), id, disk)
	require.NoError(t, err)
	var buf bytes.Buffer
	_, err = d.WriteTo(&buf)
	require.NoError(t, err)
	return buf.Bytes()
}

func TestRebuildRestoresCommittedPoints(t *testing.T) {
	for _, enc := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "encrypted"}[enc], func(t *testing.T) {
			ctx := context.Background()
			var co CreateOptions
			var oo OpenOptions
			if enc {
				key, err := GenerateKey()
				require.NoError(t, err)
				co.PublicKey, oo.PrivateKey = key.Public(), key
			}
			clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			oo.Clock = clk.now
			r, dir := newTestRepo(t, co, oo)
			disks := []DiskSpec{{Name: "sda", Size: 32 * tbs, BlockSize: tbs}, {Name: "sdb", Size: 8 * tbs, BlockSize: tbs}}
			var ids []int64
			for k := 1; k <= 12; k++ {
				p, err := r.BeginPoint(ctx, "web", disks)
				require.NoError(t, err)
				var ws []BlockWrite
				for i := 0; i < 6; i++ {
					ws = append(ws, chunkWrite("sda", int64((k*3+i)%16), content(uint64(k*31+i), tbs)))
				}
				ws = append(ws, chunkWrite("sdb", int64(k%8), content(uint64(k), tbs)))
				require.NoError(t, p.Write(ctx, ws))
				pt, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(int64(k), 0), Consistency: CrashConsistent})
				require.NoError(t, err)
				ids = append(ids, pt.ID)
			}
			// A pending point must not survive a rebuild as a point.
			p, err := r.BeginPoint(ctx, "web", disks)
			require.NoError(t, err)
			require.NoError(t, p.Write(ctx, []BlockWrite{chunkWrite("sda", 3, content(999, tbs))}))
			require.NoError(t, r.LabelPoint(ctx, ids[5], "before-upgrade"))
			require.NoError(t, r.DeletePoint(ctx, ids[7]))
			_, err = r.Prune(ctx, "web", time.Unix(4, 1))
			require.NoError(t, err)
			gc, err := r.GC(ctx, GCOptions{RepackBelow: 0.95})
			require.NoError(t, err)
			st, _ := r.Stats(ctx)
			t.Logf("gc %+v stats %+v", gc, st)
			require.Positive(t, gc.PacksRepacked+gc.PacksDeleted, "the test must exercise repack")

			before, err := r.Points(ctx, "web")
			require.NoError(t, err)
			images := map[int64][]byte{}
			for _, pt := range before {
				images[pt.ID] = append(diskImage(t, r, pt.ID, "sda"), diskImage(t, r, pt.ID, "sdb")...)
			}
			require.NoError(t, r.Close())
			for _, s := range []string{"", "-wal", "-shm"} {
				os.Remove(filepath.Join(dir, indexName+s))
			}
			rep, err := Rebuild(ctx, dir, OpenOptions{})
			require.NoError(t, err)
			require.Empty(t, rep.Incomplete)
			require.Zero(t, rep.MissingChunks)
			require.Equal(t, len(before), rep.Points)

			r2, err := Open(ctx, dir, oo)
			require.NoError(t, err)
			defer r2.Close()
			after, err := r2.Points(ctx, "web")
			require.NoError(t, err)
			require.Equal(t, len(before), len(after))
			for i := range before {
				require.Equal(t, before[i].ID, after[i].ID)
				require.Equal(t, before[i].Name, after[i].Name)
				require.True(t, before[i].Instant.Equal(after[i].Instant))
				require.Equal(t, images[before[i].ID], append(diskImage(t, r2, after[i].ID, "sda"), diskImage(t, r2, after[i].ID, "sdb")...))
			}
			vr, err := r2.Verify(ctx, VerifyOptions{ReadData: true})
			require.NoError(t, err)
			require.Empty(t, vr.Damaged)
			// New points continue above every old id.
			p2, err := r2.BeginPoint(ctx, "web", disks)
			require.NoError(t, err)
			require.Greater(t, p2.ID, ids[len(ids)-1])
		})
	}
}

// TestLargeCommitInParts: a point's changes are written as many records
// over several flushes (as an initial sync of millions of blocks is) and
// read back, also after a Rebuild from the packs.
func TestLargeCommitInParts(t *testing.T) {
	ctx := context.Background()
	r, dir := newTestRepo(t, CreateOptions{}, OpenOptions{})
	r.c.partEntries, r.c.commitFlush = 7, 300
	const n = 100
	disks := []DiskSpec{{Name: "a", Size: n * tbs, BlockSize: tbs}, {Name: "b", Size: 10 * tbs, BlockSize: tbs}}
	p, err := r.BeginPoint(ctx, "big", disks)
	require.NoError(t, err)
	var ws []BlockWrite
	for b := 0; b < n; b++ {
		ws = append(ws, chunkWrite("a", int64(b), content(uint64(b*3+1), tbs)))
	}
	ws = append(ws, chunkWrite("b", 9, content(7, tbs)), BlockWrite{Disk: "b", Block: 2, Zero: true})
	require.NoError(t, p.Write(ctx, ws))
	pt, err := p.Commit(ctx, CommitInfo{Consistency: CrashConsistent})
	require.NoError(t, err)
	require.Equal(t, int64(n+2), pt.Changed)
	var parts int
	require.NoError(t, r.c.db.QueryRow(`SELECT count(*) FROM records WHERE point_id=? AND type=3`, pt.ID).Scan(&parts))
	require.Equal(t, (n+2+6)/7, parts)
	imgA, imgB := diskImage(t, r, pt.ID, "a"), diskImage(t, r, pt.ID, "b")
	require.NoError(t, r.Close())
	rep, err := Rebuild(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	require.Equal(t, 1, rep.Points)
	r2, err := Open(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	defer r2.Close()
	require.Equal(t, imgA, diskImage(t, r2, pt.ID, "a"))
	require.Equal(t, imgB, diskImage(t, r2, pt.ID, "b"))
	vr, err := r2.Verify(ctx, VerifyOptions{ReadData: true})
	require.NoError(t, err)
	require.Empty(t, vr.Damaged)
}
