package ingest

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/ferrydr/ferry/protocol/data"
	"github.com/ferrydr/ferry/protocol/frame"
	"github.com/ferrydr/ferry/protocol/msg"
	"github.com/ferrydr/ferry/storage"
)

// BenchmarkManifestAnswer measures how long the controller takes to answer
// a manifest part of 256 entries (4 KiB blocks) on a real repository, by
// what the entries name:
//
//   - possessed: chunks in the cycle machine's own point (deduplicated:
//     the answer waits for the durable hash-only writes);
//   - foreign: chunks stored, but only in another machine's point;
//   - new: chunks stored nowhere.
//
// foreign and new both get "send it"; their ns/op is the answer latency
// an agent could use to tell stored content from new (docs/security.md).
// rows/s is the manifest rows answered per second.
//
//	go test -run '^$' -bench ManifestAnswer -benchtime 300x ./controller/ingest/
func BenchmarkManifestAnswer(b *testing.B) {
	const rows, bs, stored = 256, 4096, 8192
	ctx := context.Background()
	dir := b.TempDir()
	if err := storage.Create(ctx, dir, storage.CreateOptions{PackSize: 64 << 20}); err != nil {
		b.Fatal(err)
	}
	repo, err := storage.Open(ctx, dir, storage.OpenOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer repo.Close()
	disks := []storage.DiskSpec{{Name: "d", Size: stored * bs, BlockSize: bs}}
	block := func(machine string, i int) []byte {
		blk := make([]byte, bs)
		binary.LittleEndian.PutUint64(blk, uint64(i))
		copy(blk[8:], machine)
		return blk
	}
	hashes := map[string][]data.Hash{}
	for _, m := range []string{"own", "other"} {
		p, err := repo.BeginPoint(ctx, m, disks)
		if err != nil {
			b.Fatal(err)
		}
		var ws []storage.BlockWrite
		for i := 0; i < stored; i++ {
			blk := block(m, i)
			h := storage.Hash(blake3.Sum256(blk))
			ws = append(ws, storage.BlockWrite{Disk: "d", Block: int64(i), Hash: h,
				Chunk: &storage.Chunk{Hash: h, Codec: storage.CodecNone, Data: blk, PlainLen: bs}})
			hashes[m] = append(hashes[m], data.Hash(h))
		}
		if err := p.Write(ctx, ws); err != nil {
			b.Fatal(err)
		}
		if _, err := p.Commit(ctx, storage.CommitInfo{Instant: time.Unix(1e9, 0), Consistency: storage.CrashConsistent}); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < stored; i++ {
		hashes["new"] = append(hashes["new"], data.Hash(blake3.Sum256([]byte(fmt.Sprint("new", i)))))
	}
	// Probed in no particular order, as content an agent guesses would be
	// (in chunk order, neighbouring index pages would favour "foreign").
	for _, set := range []string{"other", "new"} {
		rand.New(rand.NewPCG(1, 2)).Shuffle(len(hashes[set]), func(i, j int) {
			hashes[set][i], hashes[set][j] = hashes[set][j], hashes[set][i]
		})
	}
	g, err := New(Config{Repo: repo})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	ctx = g.NewSession(ctx) // the agent's session: cycle, manifests
	begin, err := g.Begin(ctx, "ag-1", msg.CycleBeginRequest{Machine: "own",
		Disks: []msg.DiskInfo{{Name: "d", Size: stored * bs, BlockSize: bs}}, Map: msg.MapState{Valid: true, HeadPoint: 1}})
	if err != nil {
		b.Fatal(err)
	}
	c, err := g.cycleFor(ctx, "ag-1", uint64(begin.Cycle))
	if err != nil {
		b.Fatal(err)
	}
	part := uint32(0)
	run := func(b *testing.B, set string, wantNeed bool) {
		hs := hashes[set]
		b.ResetTimer()
		for n := 0; n < b.N; n++ {
			off := (n * rows) % (len(hs) - rows)
			m := &data.Manifest{Cycle: uint64(begin.Cycle), Part: part}
			part++
			for i := 0; i < rows; i++ {
				m.Entries = append(m.Entries, data.Entry{Block: uint64(i), Hash: hs[off+i]})
			}
			rep := &replies{fw: frame.NewWriter(io.Discard), stop: func() {}}
			if err := g.manifest(ctx, "ag-1", rep, m); err != nil {
				b.Fatal(err)
			}
			c.commits.drain() // the answer is out once its writes are durable
			if err := rep.err(); err != nil {
				b.Fatal(err)
			}
			if len(rep.needs) != 0 {
				b.Fatal("the part was not answered")
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(b.N*rows)/b.Elapsed().Seconds(), "rows/s")
		c.mu.Lock()
		_, outstanding := c.outstanding[blockKey{0, 0}]
		clear(c.outstanding)
		c.mu.Unlock()
		if outstanding != wantNeed {
			b.Fatalf("%s: need = %v, want %v", set, outstanding, wantNeed)
		}
	}
	// interleaved alternates foreign and new parts in one loop and reports
	// the median answer time of each: load on the machine then hits both
	// alike, which separate sub-benchmarks cannot promise.
	b.Run("interleaved", func(b *testing.B) {
		var took [2][]time.Duration
		for n := 0; n < b.N; n++ {
			for k, set := range []string{"other", "new"} {
				hs := hashes[set]
				off := (n * rows) % (len(hs) - rows)
				m := &data.Manifest{Cycle: uint64(begin.Cycle), Part: part}
				part++
				for i := 0; i < rows; i++ {
					m.Entries = append(m.Entries, data.Entry{Block: uint64(i), Hash: hs[off+i]})
				}
				rep := &replies{fw: frame.NewWriter(io.Discard), stop: func() {}}
				t0 := time.Now()
				if err := g.manifest(ctx, "ag-1", rep, m); err != nil {
					b.Fatal(err)
				}
				took[k] = append(took[k], time.Since(t0))
				if len(rep.needs) != 0 {
					b.Fatal("the part was not answered at once")
				}
			}
		}
		c.mu.Lock()
		clear(c.outstanding)
		c.mu.Unlock()
		median := func(d []time.Duration) float64 {
			slices.Sort(d)
			return float64(d[len(d)/2].Nanoseconds())
		}
		f, nw := median(took[0]), median(took[1])
		b.ReportMetric(f, "foreign-ns/part")
		b.ReportMetric(nw, "new-ns/part")
		b.ReportMetric(f/nw, "foreign/new")
	})
	b.Run("possessed", func(b *testing.B) { run(b, "own", false) })
	b.Run("foreign", func(b *testing.B) { run(b, "other", true) })
	b.Run("new", func(b *testing.B) { run(b, "new", true) })
}
