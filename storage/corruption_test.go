package storage

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCorruptionIsNamedNeverReturned flips one byte inside a stored chunk:
// Verify names the damaged point and disk (and block), and reading that
// block fails with ErrCorrupt instead of returning wrong bytes.
func TestCorruptionIsNamedNeverReturned(t *testing.T) {
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
			r, _ := newTestRepo(t, co, oo)
			disks := []DiskSpec{{Name: "sda", Size: 8 * tbs, BlockSize: tbs}, {Name: "sdb", Size: 8 * tbs, BlockSize: tbs}}
			var ids []int64
			for k := 1; k <= 3; k++ {
				p, err := r.BeginPoint(ctx, "db", disks)
				require.NoError(t, err)
				ws := []BlockWrite{chunkWrite("sdb", int64(k), content(uint64(k*3+1), tbs))}
				if k == 1 {
					ws = append(ws, chunkWrite("sda", 5, content(4242*3+1, tbs)))
				}
				require.NoError(t, p.Write(ctx, ws))
				pt, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(int64(k), 0), Consistency: AppConsistent})
				require.NoError(t, err)
				ids = append(ids, pt.ID)
			}
			// Flip one byte in the middle of sda block 5's stored chunk.
			d, err := r.OpenDisk(ctx, ids[2], "sda")
			require.NoError(t, err)
			h, zero, err := d.BlockHash(ctx, 5)
			require.NoError(t, err)
			require.False(t, zero)
			row, err := r.c.chunkByHash(ctx, h)
			require.NoError(t, err)
			path := packPath(r.c.dir, row.pack)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			pos := row.off + row.length/2
			b := []byte{0}
			_, err = f.ReadAt(b, pos)
			require.NoError(t, err)
			b[0] ^= 0x40
			_, err = f.WriteAt(b, pos)
			require.NoError(t, err)
			require.NoError(t, f.Close())
			r.c.files.closeAll()

			for _, readData := range []bool{false, true} {
				rep, err := r.Verify(ctx, VerifyOptions{ReadData: readData})
				require.NoError(t, err)
				require.Len(t, rep.Damaged, 1)
				dm := rep.Damaged[0]
				require.Equal(t, h, dm.Hash)
				require.ErrorIs(t, dm.Err, ErrCorrupt)
				var pds []PointDisk
				for _, a := range dm.Affected {
					pds = append(pds, PointDisk{PointID: a.PointID, Machine: a.Machine, Disk: a.Disk, Blocks: a.Blocks})
				}
				want := []PointDisk{}
				for _, id := range ids {
					want = append(want, PointDisk{PointID: id, Machine: "db", Disk: "sda", Blocks: []int64{5}})
				}
				require.Equal(t, want, pds)
			}
			for _, id := range ids {
				d, err := r.OpenDisk(ctx, id, "sda")
				require.NoError(t, err)
				_, err = d.ReadBlock(ctx, 5)
				require.ErrorIs(t, err, ErrCorrupt)
				var ce *CorruptError
				require.ErrorAs(t, err, &ce)
				require.Equal(t, h, ce.Hash)
				buf := make([]byte, 8*tbs)
				_, err = d.ReadAt(buf, 0)
				require.ErrorIs(t, err, ErrCorrupt)
				// Other blocks and the other disk still read.
				_, err = d.ReadBlock(ctx, 4)
				require.NoError(t, err)
				db, err := r.OpenDisk(ctx, id, "sdb")
				require.NoError(t, err)
				_, err = db.ReadBlock(ctx, 1)
				require.NoError(t, err)
			}
		})
	}
}

// TestEncryptedNeedsTheRightKey: without a key reads fail with
// ErrKeyRequired, a wrong key with ErrWrongKey, and the envelope decrypts
// per the documented construction with the right key.
func TestEncryptedNeedsTheRightKey(t *testing.T) {
	ctx := context.Background()
	key, err := GenerateKey()
	require.NoError(t, err)
	r, dir := newTestRepo(t, CreateOptions{PublicKey: key.Public()}, OpenOptions{})
	p, err := r.BeginPoint(ctx, "m", []DiskSpec{{Name: "d", Size: tbs, BlockSize: tbs}})
	require.NoError(t, err)
	data := content(7, tbs)
	w := chunkWrite("d", 0, data)
	require.NoError(t, p.Write(ctx, []BlockWrite{w}))
	pt, err := p.Commit(ctx, CommitInfo{Consistency: CrashConsistent})
	require.NoError(t, err)

	_, err = r.ReadChunk(ctx, w.Hash)
	require.ErrorIs(t, err, ErrKeyRequired)
	rep, err := r.Verify(ctx, VerifyOptions{ReadData: true})
	require.NoError(t, err)
	require.False(t, rep.Plaintext)
	require.Empty(t, rep.Damaged)

	other, _ := GenerateKey()
	_, err = r.WithPrivateKey(other)
	require.ErrorIs(t, err, ErrWrongKey)
	keyed, err := r.WithPrivateKey(key)
	require.NoError(t, err)
	got, err := keyed.ReadChunk(ctx, w.Hash)
	require.NoError(t, err)
	require.Equal(t, data, got)
	d, err := keyed.OpenDisk(ctx, pt.ID, "d")
	require.NoError(t, err)
	blk, err := d.ReadBlock(ctx, 0)
	require.NoError(t, err)
	require.Equal(t, data, blk)

	env, err := r.ChunkEnvelope(ctx, w.Hash)
	require.NoError(t, err)
	require.NotNil(t, env.Key)
	_, err = OpenEnvelope(other, env)
	require.ErrorIs(t, err, ErrWrongKey)
	plain, err := OpenEnvelope(key, env)
	require.NoError(t, err)
	require.Equal(t, data, plain)

	require.NoError(t, r.Close())
	_, err = Open(ctx, dir, OpenOptions{PrivateKey: other})
	require.ErrorIs(t, err, ErrWrongKey)
	r2, err := Open(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	_, err = Open(ctx, dir, OpenOptions{})
	require.ErrorIs(t, err, ErrLocked)
	require.NoError(t, r2.Close())
}
