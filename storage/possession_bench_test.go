package storage

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
)

// BenchmarkHasChunksOf measures the possession check against the plain
// existence check it replaced in ingest: 1024 hashes per op on an index of
// 2 machines × 20000 chunks. Reported as hashes/s. Cases: possessed (in
// the owner's points), foreign (stored, another machine's), absent.
//
//	go test -run '^$' -bench HasChunksOf -benchtime 200x ./storage/
func BenchmarkHasChunksOf(b *testing.B) {
	const perMachine, batch, bs = 20000, 1024, 512
	ctx := context.Background()
	r, _ := newTestRepo(b, CreateOptions{}, OpenOptions{})
	hashes := map[string][]Hash{}
	for _, m := range []string{"own", "other"} {
		p, err := r.BeginPoint(ctx, m, []DiskSpec{{Name: "d", Size: perMachine * bs, BlockSize: bs}})
		require.NoError(b, err)
		var ws []BlockWrite
		for i := 0; i < perMachine; i++ {
			blk := make([]byte, bs)
			binary.LittleEndian.PutUint64(blk, uint64(i))
			copy(blk[8:], m)
			ws = append(ws, chunkWrite("d", int64(i), blk))
			hashes[m] = append(hashes[m], Hash(blake3.Sum256(blk)))
			if len(ws) == 4096 || i == perMachine-1 {
				require.NoError(b, p.Write(ctx, ws))
				ws = ws[:0]
			}
		}
		_, err = p.Commit(ctx, CommitInfo{Instant: time.Unix(1e9, 0), Consistency: CrashConsistent})
		require.NoError(b, err)
	}
	for i := 0; i < perMachine; i++ {
		hashes["absent"] = append(hashes["absent"], Hash(blake3.Sum256([]byte(fmt.Sprint("absent", i)))))
	}
	// Probed in no particular order (in chunk order, neighbouring index
	// pages would favour stored hashes).
	for _, set := range []string{"own", "other", "absent"} {
		rand.New(rand.NewPCG(1, 2)).Shuffle(len(hashes[set]), func(i, j int) {
			hashes[set][i], hashes[set][j] = hashes[set][j], hashes[set][i]
		})
	}
	run := func(b *testing.B, set string, check func([]Hash) ([]bool, error), want bool) {
		hs := hashes[set]
		b.ResetTimer()
		for n := 0; n < b.N; n++ {
			off := (n * batch) % (len(hs) - batch)
			got, err := check(hs[off : off+batch])
			if err != nil {
				b.Fatal(err)
			}
			if got[0] != want {
				b.Fatalf("%s: got %v", set, got[0])
			}
		}
		b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "hashes/s")
	}
	has := func(hs []Hash) ([]bool, error) { return r.HasChunks(ctx, hs) }
	of := func(hs []Hash) ([]bool, error) { return r.HasChunksOf(ctx, []string{"own"}, hs) }
	b.Run("exists/stored", func(b *testing.B) { run(b, "own", has, true) })
	b.Run("exists/absent", func(b *testing.B) { run(b, "absent", has, false) })
	b.Run("possession/possessed", func(b *testing.B) { run(b, "own", of, true) })
	b.Run("possession/foreign", func(b *testing.B) { run(b, "other", of, false) })
	b.Run("possession/absent", func(b *testing.B) { run(b, "absent", of, false) })
}
