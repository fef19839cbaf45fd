package ship

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/time/rate"

	"github.com/ferrydr/ferry/agent/blockmap"
	"github.com/ferrydr/ferry/protocol/data"
)

// Range is a byte range within a block that changed.
type Range struct{ Offset, Length int }

// Candidate is a block that may have changed since the map's state.
type Candidate struct {
	Block int64
	// Ranges, when known (FIEMAP), are the parts of the block that changed;
	// nil means unknown (the whole block is compared).
	Ranges []Range
	// Hole means the view holds no data here: the block reads as zeros and
	// need not be read.
	Hole bool
}

// Disk is one disk of the cycle.
type Disk struct {
	Index      uint16
	Reader     io.ReaderAt
	Size       int64
	BlockSize  int
	Map        *blockmap.Map
	Candidates iter.Seq[Candidate]
}

// Config describes one cycle.
type Config struct {
	Cycle uint64
	Disks []Disk
	// Open opens a data stream to the controller.
	Open func(ctx context.Context) (io.ReadWriteCloser, error)
	// Streams is the number of data streams (default 2).
	Streams int
	// Hashers is the number of read-and-hash workers (default: four per
	// CPU, at least 8). Most of a delta's candidates are cold blocks
	// scattered over the disk: each worker waits for its read most of the
	// time, so the device needs several reads in flight to keep a core
	// busy hashing.
	Hashers int
	// Patches lets changed parts of a block travel instead of the block.
	Patches bool
	// Limiter caps bytes per second on the wire (nil: unlimited).
	Limiter *rate.Limiter
	// Compressor compresses block data (shared, concurrency-safe).
	Compressor *data.Compressor
	// Codec is how block data is compressed: auto (the default) chooses
	// per stream between S2 and zstd from what the stream measures;
	// zstd, s2 and none fix it.
	Codec CodecChoice
	// S2 says the controller accepts S2 blocks
	// (msg.CycleBeginResponse.Codecs); without it only zstd and none
	// travel, whatever Codec says.
	S2 bool
	// Progress, if set, is told the bytes of each candidate as it is
	// compared (read and hashed, or skipped as a hole), from several
	// goroutines at once: a live progress counter. The last block of a
	// disk counts its real length.
	Progress func(bytes int64)
	Log      *slog.Logger
}

// Limits of what is in flight, to bound memory (BENCHMARKS.md: the agent
// stays within 64 MiB + 16 B per block).
const (
	partMaxBytes   = 2 << 20 // block bytes a manifest part holds (partBytes)
	partMaxEntries = 2048
	batchMaxBytes  = 4 << 20
	needWindow     = 2 // manifest parts a stream sends ahead of their Need
)

// Result counts what a cycle did.
type Result struct {
	Parts     uint32
	Entries   uint64
	Scanned   int64 // candidates examined
	Unchanged int64 // candidates equal to the map
	Zero      int64 // zero entries
	Sent      int64 // blocks whose data travelled
	Patches   int64 // of which as patches
	Deduped   int64 // entries the controller already had
	WireBytes int64 // payload bytes written to data streams
	// Codec is the codec the streams used last: "s2", "zstd" or "none",
	// or several joined by "+" when streams ended on different ones.
	Codec         string
	CodecBytes    CodecBytes // block data bytes sent, by the codec they travelled in
	CodecSwitches int64      // auto choices that changed a stream's codec
}

// item is one changed block on its way.
type item struct {
	disk    *Disk
	block   int64
	mapHash blockmap.Hash
	zero    bool
	hash    data.Hash
	buf     *[]byte // the block's bytes (pooled); nil for zero and patches
	patch   []byte  // a patch's encoding (data.EncodePatch), when only it travels
}

type part struct {
	items []*item
	bytes int
}

// Run ships one cycle and returns when every entry is durable at the
// controller (acknowledged) or on the first error.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Streams <= 0 {
		cfg.Streams = 2
	}
	if cfg.Hashers <= 0 {
		cfg.Hashers = max(4*runtime.NumCPU(), 8)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Compressor == nil {
		return Result{}, errors.New("ship: no compressor")
	}
	parent := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	r := &run{cfg: cfg, ctx: ctx, cancel: cancel, now: time.Now}
	maxBS := 0
	for _, d := range cfg.Disks {
		maxBS = max(maxBS, d.BlockSize)
	}
	r.pool.New = func() any { b := make([]byte, maxBS); return &b }

	work := make(chan struct {
		d *Disk
		c Candidate
	}, 256)
	items := make(chan *item, 64)
	parts := make(chan *part, 1)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // feeder
		defer wg.Done()
		defer close(work)
		for i := range cfg.Disks {
			d := &cfg.Disks[i]
			for c := range d.Candidates {
				select {
				case work <- struct {
					d *Disk
					c Candidate
				}{d, c}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	var hashers sync.WaitGroup
	for i := 0; i < cfg.Hashers; i++ {
		hashers.Add(1)
		go func() {
			defer hashers.Done()
			for w := range work {
				it, err := r.examine(w.d, w.c)
				if err != nil {
					cancel(err)
					return
				}
				if it == nil {
					continue
				}
				select {
				case items <- it:
				case <-ctx.Done():
					r.release(it)
					return
				}
			}
		}()
	}
	go func() { hashers.Wait(); close(items) }()
	wg.Add(1)
	go func() { // assembler
		defer wg.Done()
		defer close(parts)
		p := &part{}
		flush := func() bool {
			if len(p.items) == 0 {
				return true
			}
			select {
			case parts <- p:
				p = &part{}
				return true
			case <-ctx.Done():
				return false
			}
		}
		for it := range items {
			p.items = append(p.items, it)
			p.bytes += partBytes(it)
			if (p.bytes >= partMaxBytes || len(p.items) >= partMaxEntries) && !flush() {
				return
			}
		}
		flush()
	}()
	var streams sync.WaitGroup
	for i := 0; i < cfg.Streams; i++ {
		streams.Add(1)
		go func() {
			defer streams.Done()
			if err := r.stream(parts); err != nil {
				cancel(err)
			}
		}()
	}
	streams.Wait()
	cause := context.Cause(ctx) // the first error, if any
	cancel(nil)
	wg.Wait()
	// Drain whatever the pipeline still holds after an error.
	for range work {
	}
	for it := range items {
		r.release(it)
	}
	for p := range parts {
		for _, it := range p.items {
			r.release(it)
		}
	}
	if err := parent.Err(); err != nil {
		return r.result(), err
	}
	return r.result(), cause
}

type run struct {
	cfg    Config
	ctx    context.Context
	cancel context.CancelCauseFunc
	pool   sync.Pool

	partSeq                                          atomic.Uint32
	entries, scanned, unchanged, zero, sent, patches atomic.Int64
	deduped, wire                                    atomic.Int64
	codecBytes                                       [3]atomic.Int64 // by data codec
	switches                                         atomic.Int64
	// now times compression and sends for the auto codec choice.
	now func() time.Time

	mu         sync.Mutex
	lastCodecs [3]bool // the codecs streams ended with
}

func (r *run) result() Result {
	res := Result{
		Parts: r.partSeq.Load(), Entries: uint64(r.entries.Load()), Scanned: r.scanned.Load(),
		Unchanged: r.unchanged.Load(), Zero: r.zero.Load(), Sent: r.sent.Load(), Patches: r.patches.Load(),
		Deduped: r.deduped.Load(), WireBytes: r.wire.Load(),
		CodecBytes: CodecBytes{
			None: r.codecBytes[data.CodecNone].Load(), Zstd: r.codecBytes[data.CodecZstd].Load(), S2: r.codecBytes[data.CodecS2].Load(),
		},
		CodecSwitches: r.switches.Load(),
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for codec, used := range r.lastCodecs {
		if used {
			if res.Codec != "" {
				res.Codec += "+"
			}
			res.Codec += codecName(uint8(codec))
		}
	}
	return res
}

// streamEnded records the codec a stream ended with.
func (r *run) streamEnded(c *chooser) {
	r.switches.Add(c.switches)
	r.mu.Lock()
	r.lastCodecs[c.codec] = true
	r.mu.Unlock()
}

func (r *run) release(it *item) {
	if it.buf != nil {
		r.pool.Put(it.buf)
		it.buf = nil
	}
}

// examine reads and hashes one candidate; nil means unchanged.
func (r *run) examine(d *Disk, c Candidate) (*item, error) {
	r.scanned.Add(1)
	if r.cfg.Progress != nil {
		r.cfg.Progress(max(0, min(int64(d.BlockSize), d.Size-c.Block*int64(d.BlockSize))))
	}
	old := d.Map.Get(c.Block)
	if c.Hole {
		if old == blockmap.ZeroHash {
			r.unchanged.Add(1)
			return nil, nil
		}
		return &item{disk: d, block: c.Block, zero: true}, nil
	}
	bp := r.pool.Get().(*[]byte)
	buf := (*bp)[:d.BlockSize]
	off := c.Block * int64(d.BlockSize)
	k, err := d.Reader.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		r.pool.Put(bp)
		return nil, fmt.Errorf("read block %d at %d: %w", c.Block, off, err)
	}
	clear(buf[k:]) // the last block of a disk is padded with zeros
	h := blockmap.Sum(buf)
	if h == old {
		r.pool.Put(bp)
		r.unchanged.Add(1)
		return nil, nil
	}
	if h == blockmap.ZeroHash {
		r.pool.Put(bp)
		return &item{disk: d, block: c.Block, zero: true}, nil
	}
	it := &item{disk: d, block: c.Block, mapHash: h, hash: data.Hash(blake3.Sum256(buf)), buf: bp}
	if r.cfg.Patches && c.Ranges != nil && old != blockmap.ZeroHash {
		total := 0
		for _, rg := range c.Ranges {
			total += rg.Length
		}
		if total <= d.BlockSize/2 {
			// The patch is all that travels: encode it now and give the
			// block's buffer back, so that a part of patches holds (and
			// the agent keeps in memory until the controller answers)
			// what changed, not whole blocks (partBytes).
			runs := make([]data.PatchRun, len(c.Ranges))
			for i, rg := range c.Ranges {
				runs[i] = data.PatchRun{Offset: uint32(rg.Offset), Data: buf[rg.Offset : rg.Offset+rg.Length]}
			}
			it.patch = data.EncodePatch(runs...)
			r.pool.Put(bp)
			it.buf = nil
		}
	}
	return it, nil
}

// partBytes is what an item counts toward its part's partMaxBytes: its
// block, or for a patch its encoding but at least an eighth of the block.
// The floor bounds what the controller holds per part: it rebuilds each
// patched block whole (at most 8 × partMaxBytes of rebuilt blocks a part).
// With whole blocks counted, a part of 64 KiB patches was 32 entries, and
// under random churn the cycle waited on one controller round trip (a
// pack fdatasync and an index commit) per 32 blocks.
func partBytes(it *item) int {
	switch {
	case it.patch != nil:
		return max(len(it.patch), it.disk.BlockSize/8)
	case it.buf != nil:
		return it.disk.BlockSize
	}
	return 0
}
