package storage

import "sync"

// bufPool keeps large byte buffers for reuse. A group commit needs two the
// size of its batch (the records appended, and their read-back after the
// fdatasync); made afresh per group, the runtime zeroed every byte of both
// before use: 0.34 of the controller's 5.4 core-seconds in an initial sync
// of 1.2 GB (docs/benchmarks.md "Index write amplification and ingest
// CPU"). A buffer comes back with its old contents: callers overwrite
// what they use.
type bufPool struct {
	p   sync.Pool
	min int // buffers below this capacity are not kept
}

// groupBufs serves the group commit's batch and read-back buffers.
var groupBufs = bufPool{min: 1 << 20}

// plainBufs serves the buffers supplied chunks are decoded into to be
// checked (core.checkSupplied): one a chunk, up to MaxBlockSize.
var plainBufs = bufPool{min: 4 << 10}

// get returns a buffer of length n; its bytes are not zeroed.
func (bp *bufPool) get(n int) []byte {
	if b, ok := bp.p.Get().(*[]byte); ok {
		if cap(*b) >= n {
			return (*b)[:n]
		}
		// Too small for this batch: let it go, a bigger one replaces it.
	}
	return make([]byte, n)
}

// put gives b back. Buffers smaller than the pool's min are not kept.
func (bp *bufPool) put(b []byte) {
	if cap(b) < bp.min {
		return
	}
	b = b[:0]
	bp.p.Put(&b)
}
