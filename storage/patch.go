package storage

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/ferrydr/ferry/storage/internal/pack"
	"github.com/zeebo/blake3"
)

// Patch records (docs/storage-format.md "Patch records"). A patch write is
// stored as the agent sent it — its runs, in the codec they arrived in —
// over the block's current chunk, instead of being rebuilt into a whole
// block at ingest: a cycle of small random writes then costs the
// controller the bytes it received, not a read, hash and compression of
// every block they touched. Reads rebuild the block (the base, then the
// runs) and check it against its hash; compaction folds cold patches into
// whole chunks. Chains are bounded, so a read stays a few record reads.

// maxPatchDepth bounds a chain of patches: a patch over a chunk that is
// itself at this depth is rebuilt at ingest instead (a block rewritten by
// small writes in every cycle between two compactions).
const maxPatchDepth = 4

// encodePatch is the stored (and wire) encoding of runs: each run as
// [u32 offset][u32 length][bytes], big-endian, offsets increasing.
func encodePatch(runs []PatchRun) []byte {
	n := 0
	for _, r := range runs {
		n += 8 + len(r.Data)
	}
	b := make([]byte, 0, n)
	for _, r := range runs {
		b = binary.BigEndian.AppendUint32(b, uint32(r.Offset))
		b = binary.BigEndian.AppendUint32(b, uint32(len(r.Data)))
		b = append(b, r.Data...)
	}
	return b
}

// eachRun calls fn with each run of an encoded patch, after checking it
// against a block of blockLen bytes and the order rule; a patch with no
// run, or one that ends inside a run, is refused.
func eachRun(p []byte, blockLen int, fn func(off int, data []byte)) error {
	if len(p) == 0 {
		return fmt.Errorf("patch with no runs")
	}
	next := 0
	for len(p) > 0 {
		if len(p) < 8 {
			return fmt.Errorf("patch ends inside a run header")
		}
		off, n := int(binary.BigEndian.Uint32(p)), int(binary.BigEndian.Uint32(p[4:]))
		p = p[8:]
		if n == 0 || off < next || n > len(p) || off+n > blockLen {
			return fmt.Errorf("patch run [%d, %d) empty, out of order or outside a block of %d bytes", off, off+n, blockLen)
		}
		fn(off, p[:n])
		p, next = p[n:], off+n
	}
	return nil
}

// patchOf is a patch write's runs, checked against a block of blockLen
// bytes, and its bytes as they arrived (encoded here, uncompressed, when
// the caller gave only the runs). A caller that decoded the patch already
// (the ingest) gives both, and nothing is decoded twice: the record's own
// bytes are checked against its hash before its point commits
// (patchcheck.go).
func (c *core) patchOf(w BlockWrite, blockLen int) ([]PatchRun, *Chunk, error) {
	pd := w.PatchData
	if w.Patch == nil {
		plain, err := c.zc.decode(pd.Codec, pd.Data, pd.PlainLen)
		if err != nil {
			return nil, nil, err
		}
		var runs []PatchRun
		err = eachRun(plain, blockLen, func(off int, data []byte) { runs = append(runs, PatchRun{Offset: off, Data: data}) })
		return runs, pd, err
	}
	if len(w.Patch) == 0 {
		return nil, nil, fmt.Errorf("patch with no runs")
	}
	next := 0
	for _, r := range w.Patch {
		if len(r.Data) == 0 || r.Offset < next || r.Offset+len(r.Data) > blockLen {
			return nil, nil, fmt.Errorf("patch run [%d, %d) empty, out of order or outside a block of %d bytes", r.Offset, r.Offset+len(r.Data), blockLen)
		}
		next = r.Offset + len(r.Data)
	}
	if pd == nil {
		enc := encodePatch(w.Patch)
		pd = &Chunk{Hash: w.Hash, Codec: CodecNone, Data: enc, PlainLen: len(enc)}
	}
	return w.Patch, pd, nil
}

// applyPatch writes the runs of an encoded patch over block.
func applyPatch(block, p []byte) error {
	return eachRun(p, len(block), func(off int, data []byte) { copy(block[off:], data) })
}

// readPatch rebuilds the block of a patch record: its base (zeros, or the
// base chunk read the same way), the runs applied, the result checked
// against the row's hash. A mismatch is a corrupt chunk like any other:
// the patch's hash was the agent's claim, and this is where it is checked.
func (r *Repo) readPatch(ctx context.Context, row chunkRow, ch pack.Chunk) ([]byte, error) {
	bad := func(reason string, err error) ([]byte, error) {
		return nil, &CorruptError{Pack: packName(row.pack), Offset: row.off, Hash: row.hash, Reason: reason, Err: err}
	}
	p, err := r.c.zc.decode(Codec(ch.Codec), ch.Data, int(ch.PlainLen))
	if err != nil {
		return bad("decode", err)
	}
	var block []byte
	if row.base == 0 {
		block = make([]byte, ch.BlockLen)
	} else {
		if row.depth < 1 || row.depth > maxPatchDepth {
			return bad(fmt.Sprintf("patch at depth %d, outside 1..%d", row.depth, maxPatchDepth), nil)
		}
		base, err := r.c.chunkByID(ctx, row.base)
		if err != nil {
			return nil, fmt.Errorf("base of patch %s: %w", row.hash, err)
		}
		if base.patch && base.depth >= row.depth {
			return bad(fmt.Sprintf("base at depth %d under a patch at depth %d", base.depth, row.depth), nil)
		}
		if Hash(ch.Base) != base.hash {
			return bad("patch record names another base than its index row", nil)
		}
		cur, err := r.readChunkRow(ctx, base)
		if err != nil {
			return nil, fmt.Errorf("base of patch %s: %w", row.hash, err)
		}
		if len(cur) != int(ch.BlockLen) {
			return bad(fmt.Sprintf("base of %d bytes under a patch of a %d-byte block", len(cur), ch.BlockLen), nil)
		}
		block = append([]byte(nil), cur...) // cur may alias a cached record
	}
	if err := applyPatch(block, p); err != nil {
		return bad("patch", err)
	}
	if blake3.Sum256(block) != row.hash {
		return bad("patched block does not match its hash", ErrHashMismatch)
	}
	return block, nil
}
