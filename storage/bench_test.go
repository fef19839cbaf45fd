package storage

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"
	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"
)

// The scale and throughput figures are benchmarks, run by
// scripts/bench-storage.sh (make bench) with FERRY_BENCH=1, never in CI.

func benchEnv(t *testing.T) {
	if os.Getenv("FERRY_BENCH") != "1" {
		t.Skip("benchmark: set FERRY_BENCH=1 (scripts/bench-storage.sh)")
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func benchDir(t testing.TB) string {
	if d := os.Getenv("FERRY_BENCH_DIR"); d != "" {
		dir, err := os.MkdirTemp(d, "storage-bench-")
		require.NoError(t, err)
		t.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return t.TempDir()
}

// TestScale: 17,280 points of 1,000 random changed blocks on a 2 TiB disk
// model (64 KiB blocks), blocks drawn from a pool of 10,000 chunks. Prints
// commit time per point, a random block read at a random point, and the
// prune of the oldest point at 1k, 8k and 17k points: they should be flat.
func TestScale(t *testing.T) {
	benchEnv(t)
	ctx := context.Background()
	const bs = 64 << 10
	points := envInt("FERRY_BENCH_POINTS", 17280)
	perPoint := envInt("FERRY_BENCH_CHANGES", 1000)
	poolN := envInt("FERRY_BENCH_POOL", 10000)
	disk := DiskSpec{Name: "d0", Size: 2 << 40, BlockSize: bs}
	nblocks := disk.Size / bs
	dir := benchDir(t)
	require.NoError(t, Create(ctx, dir, CreateOptions{}))
	r, err := Open(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	defer r.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	pool := make([][]byte, poolN)
	hashes := make([]Hash, poolN)
	stored := make([]bool, poolN)
	for i := range pool {
		b := make([]byte, bs)
		for j := 0; j < bs; j += 8 {
			binary.LittleEndian.PutUint64(b[j:], rng.Uint64())
		}
		pool[i], hashes[i] = b, Hash(blake3.Sum256(b))
	}
	checkpoints := map[int]bool{}
	for _, c := range []int{1000, 8000, 17000} {
		checkpoints[c*points/17280] = true
	}
	var ids []int64
	var window []time.Duration
	fmt.Printf("| points | commit ms/point (last 100) | random read ms (100) | prune oldest ms (3) |\n|---|---|---|---|\n")
	for k := 1; k <= points; k++ {
		t0 := time.Now()
		p, err := r.BeginPoint(ctx, "scale", []DiskSpec{disk})
		require.NoError(t, err)
		ws := make([]BlockWrite, 0, perPoint)
		seen := map[int64]bool{}
		for len(ws) < perPoint {
			b := rng.Int64N(nblocks)
			if seen[b] {
				continue
			}
			seen[b] = true
			j := rng.IntN(poolN)
			w := BlockWrite{Disk: "d0", Block: b, Hash: hashes[j]}
			if !stored[j] {
				w.Chunk = &Chunk{Hash: hashes[j], Codec: CodecNone, Data: pool[j], PlainLen: bs}
				stored[j] = true
			}
			ws = append(ws, w)
		}
		require.NoError(t, p.Write(ctx, ws))
		pt, err := p.Commit(ctx, CommitInfo{Instant: time.Unix(int64(k*5), 0), Consistency: CrashConsistent})
		require.NoError(t, err)
		ids = append(ids, pt.ID)
		window = append(window, time.Since(t0))
		if len(window) > 100 {
			window = window[1:]
		}
		if !checkpoints[k] {
			continue
		}
		var sum time.Duration
		for _, d := range window {
			sum += d
		}
		commitMs := float64(sum.Microseconds()) / float64(len(window)) / 1000
		t1 := time.Now()
		for i := 0; i < 100; i++ {
			d, err := r.OpenDisk(ctx, ids[rng.IntN(len(ids))], "d0")
			require.NoError(t, err)
			_, err = d.ReadBlock(ctx, rng.Int64N(nblocks))
			require.NoError(t, err)
		}
		readMs := float64(time.Since(t1).Microseconds()) / 100 / 1000
		t2 := time.Now()
		for i := 0; i < 3; i++ {
			require.NoError(t, r.DeletePoint(ctx, ids[0]))
			ids = ids[1:]
		}
		pruneMs := float64(time.Since(t2).Microseconds()) / 3 / 1000
		fmt.Printf("| %d | %.2f | %.3f | %.2f |\n", k, commitMs, readMs, pruneMs)
	}
}

// mixedBlocks makes n 64 KiB blocks of the BENCHMARKS.md mix: 40% zero,
// 30% text-like, 30% random. The text is words drawn from a seeded
// vocabulary of 2,000 random words, which gives a zstd ratio of about 2.3
// (the bench prints the measured ratio of its text blocks).
func mixedBlocks(n int) [][]byte {
	rng := rand.New(rand.NewPCG(3, 4))
	words := make([]string, 2000)
	for i := range words {
		w := make([]byte, 3+rng.IntN(8))
		for j := range w {
			w[j] = byte('a' + rng.IntN(26))
		}
		words[i] = string(w) + " "
	}
	out := make([][]byte, n)
	for i := range out {
		b := make([]byte, 64<<10)
		switch x := rng.IntN(10); {
		case x < 4:
		case x < 7:
			for j := 0; j < len(b); {
				j += copy(b[j:], words[rng.IntN(len(words))])
			}
		default:
			for j := 0; j < len(b); j += 8 {
				binary.LittleEndian.PutUint64(b[j:], rng.Uint64())
			}
		}
		out[i] = b
	}
	return out
}

// TestIngestThroughput prints repository ingest and read-back MB/s for the
// mixed workload beside anchors measured in the same run on the same bytes:
// `zstd -1` of them, and a plain fdatasync'd write of the compressed bytes.
func TestIngestThroughput(t *testing.T) {
	benchEnv(t)
	ctx := context.Background()
	n := envInt("FERRY_BENCH_BLOCKS", 8192) // 512 MiB
	blocks := mixedBlocks(n)
	total := float64(n) * 65536
	dir := benchDir(t)
	require.NoError(t, Create(ctx, dir, CreateOptions{}))
	r, err := Open(ctx, dir, OpenOptions{})
	require.NoError(t, err)
	defer r.Close()
	disk := DiskSpec{Name: "d0", Size: int64(n) << 16, BlockSize: 64 << 10}
	t0 := time.Now()
	p, err := r.BeginPoint(ctx, "ingest", []DiskSpec{disk})
	require.NoError(t, err)
	const batch = 64 // 4 MiB per Write: one fdatasync, one SQLite commit
	// Several writers, as the controller has several data streams: one's
	// hashing and compression overlaps another's fdatasync.
	writers := envInt("FERRY_BENCH_WRITERS", 2)
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w * batch; i < n; i += writers * batch {
				var ws []BlockWrite
				for j := i; j < min(i+batch, n); j++ {
					ws = append(ws, chunkWrite("d0", int64(j), blocks[j]))
				}
				if err := p.Write(ctx, ws); err != nil {
					errs[w] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	pt, err := p.Commit(ctx, CommitInfo{Consistency: CrashConsistent})
	require.NoError(t, err)
	ingest := time.Since(t0)
	st, _ := r.Stats(ctx)
	t1 := time.Now()
	d, err := r.OpenDisk(ctx, pt.ID, "d0")
	require.NoError(t, err)
	_, err = d.WriteTo(io.Discard)
	require.NoError(t, err)
	readBack := time.Since(t1)

	// Anchor 1: zstd -1 of the same bytes (CLI if installed).
	raw := filepath.Join(dir, "raw.img")
	f, err := os.Create(raw)
	require.NoError(t, err)
	for _, b := range blocks {
		f.Write(b)
	}
	f.Close()
	zstdTime := time.Duration(0)
	if path, err := exec.LookPath("zstd"); err == nil {
		t2 := time.Now()
		require.NoError(t, exec.Command(path, "-1", "-q", "-f", "-o", raw+".zst", raw).Run())
		zstdTime = time.Since(t2)
	}
	// Anchor 2: fdatasync'd write of the zstd-compressed bytes (in-process
	// compression, 4 MiB writes each followed by fdatasync, like a batch).
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	var comp [][]byte
	var compBytes, textIn, textOut int
	for _, b := range blocks {
		c := enc.EncodeAll(b, nil)
		comp = append(comp, c)
		compBytes += len(c)
		if !isZero(b) && len(c) < len(b)*9/10 {
			textIn += len(b)
			textOut += len(c)
		}
	}
	out, err := os.Create(filepath.Join(dir, "plain.out"))
	require.NoError(t, err)
	t3 := time.Now()
	var buf []byte
	for i, c := range comp {
		buf = append(buf, c...)
		if (i+1)%batch == 0 || i == len(comp)-1 {
			_, err := out.Write(buf)
			require.NoError(t, err)
			require.NoError(t, unix.Fdatasync(int(out.Fd())))
			buf = buf[:0]
		}
	}
	plainWrite := time.Since(t3)
	out.Close()
	mbps := func(d time.Duration) string {
		if d == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.0f", total/1e6/d.Seconds())
	}
	fmt.Printf("| case | MB/s (logical bytes) |\n|---|---|\n")
	fmt.Printf("| repository ingest (verify+compress+pack+fdatasync+index), %d MiB, %d writers | %s |\n", n/16, writers, mbps(ingest))
	fmt.Printf("| repository read-back (WriteTo, hash-checked) | %s |\n", mbps(readBack))
	fmt.Printf("| anchor: zstd -1 CLI of the same bytes | %s |\n", mbps(zstdTime))
	fmt.Printf("| anchor: fdatasync'd 4 MiB writes of the compressed bytes | %s |\n", mbps(plainWrite))
	fmt.Printf("stored %d bytes in %d packs; zstd(fastest) ratio of the whole mix %.2f, of its text blocks %.2f\n",
		st.StoredBytes, st.Packs, total/float64(compBytes), float64(textIn)/float64(max(textOut, 1)))
}

// BenchmarkWrite4MiB measures one 4 MiB Write batch of the mixed workload
// (go test -bench Write4MiB -run ^$ ./storage/), with the blocks supplied
// uncompressed (the repository encodes them) and as S2 (an agent's, on a
// fast link: checked and stored as they arrived).
func BenchmarkWrite4MiB(b *testing.B) {
	for _, c := range []struct {
		name  string
		codec Codec
	}{{"none", CodecNone}, {"s2", CodecS2}} {
		b.Run(c.name, func(b *testing.B) { benchmarkWrite4MiB(b, c.codec) })
	}
}

func benchmarkWrite4MiB(b *testing.B, codec Codec) {
	ctx := context.Background()
	blocks := mixedBlocks(64 * 64)
	dir := b.TempDir()
	require.NoError(b, Create(ctx, dir, CreateOptions{}))
	r, err := Open(ctx, dir, OpenOptions{})
	require.NoError(b, err)
	defer r.Close()
	disk := DiskSpec{Name: "d0", Size: 1 << 40, BlockSize: 64 << 10}
	p, err := r.BeginPoint(ctx, "bench", []DiskSpec{disk})
	require.NoError(b, err)
	b.SetBytes(64 << 16)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var ws []BlockWrite
		for j := 0; j < 64; j++ {
			blk := blocks[(i*64+j)%len(blocks)]
			// Vary content so every block is a new chunk.
			blk = append([]byte(nil), blk...)
			binary.LittleEndian.PutUint64(blk[len(blk)-8:], uint64(i*64+j+1))
			w := chunkWrite("d0", int64(i*64+j), blk)
			if codec == CodecS2 && w.Chunk != nil {
				w.Chunk.Codec, w.Chunk.Data = codec, s2.Encode(nil, blk)
			}
			ws = append(ws, w)
		}
		require.NoError(b, p.Write(ctx, ws))
	}
}

// BenchmarkConcurrentWriters: n machines' cycles write at once, each to
// its own pending point, 8 new 64 KiB blocks per Write (go test -bench
// ConcurrentWriters -run ^$ ./storage/; FERRY_BENCH_DIR puts the
// repository on the filesystem to measure). Every Write holds the
// repository's write lock through its pack fdatasync and index commit, so
// the MB/s stays flat as writers are added; a group commit across writers
// (docs/benchmarks.md, plan RTO) is what would raise it.
func BenchmarkConcurrentWriters(b *testing.B) {
	const perWrite = 8
	disks := []DiskSpec{{Name: "d0", Size: 1 << 40, BlockSize: 64 << 10}}
	blocks := mixedBlocks(64)
	for _, n := range []int{1, 5, 20} {
		b.Run(fmt.Sprintf("writers=%d", n), func(b *testing.B) {
			ctx := context.Background()
			dir := benchDir(b)
			require.NoError(b, Create(ctx, dir, CreateOptions{}))
			r, err := Open(ctx, dir, OpenOptions{ExclusiveLock: true})
			require.NoError(b, err)
			defer r.Close()
			var unique sync.Mutex
			next := uint64(0)
			content := func(i int) []byte {
				unique.Lock()
				next++
				v := next
				unique.Unlock()
				blk := append([]byte(nil), blocks[i%len(blocks)]...)
				binary.LittleEndian.PutUint64(blk[len(blk)-8:], v) // every block a new chunk
				return blk
			}
			b.SetBytes(perWrite * 64 << 10)
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := range n {
				writes := b.N / n
				if w < b.N%n {
					writes++
				}
				wg.Go(func() {
					p, err := r.BeginPoint(ctx, fmt.Sprintf("m%d", w), disks)
					if err != nil {
						b.Error(err)
						return
					}
					for i := range writes {
						var ws []BlockWrite
						for j := range perWrite {
							ws = append(ws, chunkWrite("d0", int64(i*perWrite+j), content(i*perWrite+j)))
						}
						if err := p.Write(ctx, ws); err != nil {
							b.Error(err)
							return
						}
					}
					if _, err := p.Commit(ctx, CommitInfo{Instant: time.Now(), Consistency: CrashConsistent}); err != nil {
						b.Error(err)
					}
				})
			}
			wg.Wait()
		})
	}
}
