package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/ferrydr/ferry/storage/internal/pack"
	"github.com/zeebo/blake3"
)

// prepared is a verified chunk ready to append: encoded, not yet encrypted.
type prepared struct {
	hash     Hash
	codec    Codec
	data     []byte
	plainLen int
	patch    *patchPrep // a patch record: data is the patch as it arrived
}

// prepare verifies a supplied chunk (decode per codec, BLAKE3 == Hash,
// length == PlainLen) and compresses plaintext when that helps. A chunk
// built from a patch was hashed when the patch was applied (checked).
func (c *core) prepare(ch *Chunk, checked bool) (*prepared, error) {
	if !checked {
		if err := c.checkSupplied(ch); err != nil {
			return nil, err
		}
	} else if ch.Codec == CodecNone && len(ch.Data) != ch.PlainLen {
		return nil, fmt.Errorf("%w: chunk %s: length %d, want %d", ErrHashMismatch, ch.Hash, len(ch.Data), ch.PlainLen)
	}
	// Stored as it arrived; what arrived uncompressed is encoded here.
	p := &prepared{hash: ch.Hash, codec: ch.Codec, data: ch.Data, plainLen: ch.PlainLen}
	if ch.Codec == CodecNone {
		p.codec, p.data = c.ingestCompress(ch.Data)
	}
	return p, nil
}

// checkSupplied decodes a supplied chunk into a pooled buffer and
// compares its BLAKE3 and length with the chunk's claim. The plaintext is
// dropped: a chunk is stored as it arrived, so a fresh buffer per chunk
// was only garbage, zeroed by the runtime before each decode.
func (c *core) checkSupplied(ch *Chunk) error {
	var buf []byte
	if ch.Codec != CodecNone { // decodeInto returns the data itself
		buf = plainBufs.get(ch.PlainLen)
		defer plainBufs.put(buf)
	}
	plain, err := c.zc.decodeInto(buf, ch.Codec, ch.Data, ch.PlainLen)
	switch {
	case err != nil:
		return fmt.Errorf("%w: chunk %s: %v", ErrHashMismatch, ch.Hash, err)
	case blake3.Sum256(plain) != ch.Hash:
		return fmt.Errorf("%w: chunk %s", ErrHashMismatch, ch.Hash)
	}
	return nil
}

// ingestCompress encodes a chunk the controller had to build or that
// arrived uncompressed. In a plain repository that is S2, which the
// compactor re-encodes to zstd once the chunk is cold; an encrypted
// repository's chunks are sealed under keys the controller cannot open
// again, so they get zstd at once.
func (c *core) ingestCompress(plain []byte) (Codec, []byte) {
	if c.pub != nil {
		return c.zc.compress(plain)
	}
	return compressFast(plain)
}

// chunkPayload builds a chunk record payload, encrypting it under the open
// pack's data key in an encrypted repository.
func (c *core) chunkPayload(b *batch, p *prepared) ([]byte, uint32, error) {
	rec := pack.Chunk{Hash: p.hash, Codec: uint8(p.codec), PlainLen: uint32(p.plainLen), Data: p.data}
	if p.patch != nil {
		rec.Flags, rec.Base, rec.BlockLen = pack.ChunkPatch, p.patch.baseHash, uint32(p.patch.blockLen)
		return pack.EncodeChunk(rec), 0, nil
	}
	if c.pub != nil {
		k, err := c.packKey(b)
		if err != nil {
			return nil, 0, err
		}
		nonce := make([]byte, gcmNonceSize, gcmNonceSize+len(p.data)+16)
		randRead(nonce)
		rec.Data = k.aead.Seal(nonce, nonce, p.data, chunkAAD(p.hash, p.codec, uint32(p.plainLen)))
		rec.Flags = pack.ChunkEncrypted
		rec.KeySlot = k.slot
	}
	return pack.EncodeChunk(rec), rec.KeySlot, nil
}

// prepareAll verifies and compresses chunks on all cores (hashing and
// compression are the CPU cost of ingest; the fdatasync is not).
func (c *core) prepareAll(ctx context.Context, chunks []*Chunk, checked map[*Chunk]bool) (map[Hash]*prepared, error) {
	out := make(map[Hash]*prepared, len(chunks))
	if len(chunks) == 0 {
		return out, nil
	}
	res := make([]*prepared, len(chunks))
	errs := make([]error, len(chunks))
	workers := min(runtime.GOMAXPROCS(0), len(chunks))
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(chunks) || ctx.Err() != nil {
					return
				}
				res[i], errs[i] = c.prepare(chunks[i], checked[chunks[i]])
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for i, p := range res {
		if errs[i] != nil {
			return nil, errs[i]
		}
		out[p.hash] = p
	}
	return out, nil
}

// verifyAll checks supplied chunks that are stored already (decode per
// codec, BLAKE3 == Hash, length == PlainLen) without keeping them.
func (c *core) verifyAll(ctx context.Context, chunks []*Chunk) error {
	if len(chunks) == 0 {
		return nil
	}
	errs := make([]error, len(chunks))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(chunks)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(chunks) || ctx.Err() != nil {
					return
				}
				errs[i] = c.checkSupplied(chunks[i])
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.Join(errs...)
}

type writeItem struct {
	diskID int64
	block  int64
	zero   bool
	hash   Hash
}

// Write stores blocks of the pending point. It is durable when it returns:
// new chunks are appended to the open pack and fdatasync'd once, re-read and
// checked, then one index transaction inserts the chunk and change rows.
//
// A patch is stored as a patch record when it can be (planPatches), and is
// otherwise rebuilt into its block and checked here.
func (p *Pending) Write(ctx context.Context, ws []BlockWrite) error {
	c := p.r.c
	if err := c.check(); err != nil {
		return err
	}
	items := make([]writeItem, len(ws))
	supplied := map[Hash]*Chunk{}
	patched := map[*Chunk]bool{} // built from a patch, checked when it was applied
	var hashes []Hash
	for i, w := range ws {
		did, ok := p.diskIDs[w.Disk]
		if !ok {
			return fmt.Errorf("%w: disk %q is not part of pending point %d", ErrNotFound, w.Disk, p.ID)
		}
		spec := p.specs[w.Disk]
		nblocks := (spec.Size + int64(spec.BlockSize) - 1) / int64(spec.BlockSize)
		if w.Block < 0 || w.Block >= nblocks {
			return fmt.Errorf("storage: block %d outside disk %q of %d blocks", w.Block, w.Disk, nblocks)
		}
		items[i] = writeItem{diskID: did, block: w.Block, zero: w.Zero, hash: w.Hash}
		switch {
		case w.Zero:
			items[i].hash = Hash{}
			continue
		case w.Patch != nil || w.PatchData != nil:
		case w.Chunk != nil:
			if w.Chunk.Hash != w.Hash {
				return fmt.Errorf("%w: block %d: write hash %s, chunk hash %s", ErrHashMismatch, w.Block, w.Hash, w.Chunk.Hash)
			}
			if w.Chunk.PlainLen != spec.BlockSize {
				return fmt.Errorf("storage: block %d: chunk of %d bytes on a disk of %d-byte blocks", w.Block, w.Chunk.PlainLen, spec.BlockSize)
			}
			supplied[w.Hash] = w.Chunk
		}
		hashes = append(hashes, w.Hash)
	}
	added := c.chunksAdded.Load()
	have, err := c.lookupHashes(ctx, hashes)
	if err != nil {
		return err
	}
	records, rebuilt, refused, err := p.planPatches(ctx, ws, supplied, have)
	if err != nil {
		return err
	}
	for _, ch := range rebuilt {
		if ch != nil {
			supplied[ch.Hash] = ch
			patched[ch] = true
		}
	}
	if len(refused) > 0 {
		// A rebuilt patch that does not give its hash fails the point at
		// its commit, as a record's check does, not this batch: the answer
		// must not depend on whether the hash is stored (by another
		// machine, say), or it would tell the writer so.
		c.checks.refuse(p.ID, len(refused))
		skip := map[int]bool{}
		for _, i := range refused {
			skip[i] = true
		}
		kept, hs := items[:0], hashes[:0]
		for i, it := range items {
			if skip[i] {
				continue
			}
			kept = append(kept, it)
			if !it.zero {
				hs = append(hs, it.hash)
			}
		}
		items, hashes = kept, hs
	}
	var todo, check []*Chunk
	queued := map[Hash]bool{}
	for h := range records {
		queued[h] = true
	}
	for _, h := range hashes {
		if queued[h] {
			continue
		}
		if _, ok := have[h]; ok {
			// Content that is stored already is still checked when it was
			// supplied: a writer that claims a stored hash for bytes that
			// are not its content must not get a reference to the stored
			// chunk (docs/security.md "Hostile agent"). Patches were
			// checked when they were applied.
			if ch := supplied[h]; ch != nil && !patched[ch] {
				check = append(check, ch)
			}
			queued[h] = true
			continue
		}
		ch := supplied[h]
		if ch == nil {
			return fmt.Errorf("%w: %s (hash-only write of a chunk that is not stored)", ErrChunkMissing, h)
		}
		queued[h] = true
		todo = append(todo, ch)
	}
	if err := c.verifyAll(ctx, check); err != nil {
		return err
	}
	preps, err := c.prepareAll(ctx, todo, patched)
	if err != nil {
		return err
	}
	for h, pr := range records {
		preps[h] = pr
	}
	// The batch joins the next group commit: the writers waiting at the
	// same time share one append, one fdatasync and one transaction. A
	// deduped chunk may have been deleted by GC since the lookup; the
	// transaction re-checks, and a second round stores it again.
	req := &writeReq{ctx: ctx, pointID: p.ID, items: items, have: have, preps: preps, added: added}
	for round := 0; ; round++ {
		missing, err := c.commitWrite(req)
		if err == nil && len(missing) == 0 && len(req.recorded) > 0 {
			c.checks.start(p.r, p.ID, req.recorded)
		}
		if err != nil || len(missing) == 0 {
			return err
		}
		if round >= 2 {
			return fmt.Errorf("storage: chunks keep disappearing during write (GC race): %d missing", len(missing))
		}
		for _, h := range missing {
			delete(have, h)
			ch := supplied[h]
			if ch == nil {
				return fmt.Errorf("%w: %s (deleted by GC before the write committed)", ErrChunkMissing, h)
			}
			pr, err := c.prepare(ch, patched[ch])
			if err != nil {
				return err
			}
			preps[h] = pr
		}
		req = &writeReq{ctx: ctx, pointID: p.ID, items: req.items, have: have, preps: preps, recheck: true}
	}
}

// dedupPrepared moves the prepared chunks that are stored by now into have.
// The caller holds writeMu, so nothing can store them in between.
func (c *core) dedupPrepared(ctx context.Context, have map[Hash]int64, preps map[Hash]*prepared) error {
	if len(preps) == 0 {
		return nil
	}
	hs := make([]Hash, 0, len(preps))
	for h := range preps {
		hs = append(hs, h)
	}
	stored, err := c.lookupHashes(ctx, hs)
	if err != nil {
		return err
	}
	for h, id := range stored {
		if preps[h].patch != nil {
			continue // a claim, never deduplicated: settlePatches rebuilds it
		}
		have[h] = id
		delete(preps, h)
	}
	return nil
}

// patchPrep is what a patch record needs beyond its bytes.
type patchPrep struct {
	base     int64 // chunk id, 0 for a zero block
	baseHash Hash  // zero for a zero block
	blockLen int
	depth    int
	// rebuild makes the whole block instead, checked against its hash,
	// for a group commit that finds the hash stored meanwhile.
	rebuild func() (*Chunk, error)
}

// patchWrite is one patch of a Write: its runs, and the block's current
// chunk (hasBase false: zeros).
type patchWrite struct {
	i       int
	runs    []PatchRun
	data    *Chunk // as it arrived
	base    chunkRow
	hasBase bool
}

// planPatches sorts the patch writes of ws into patch records, stored as
// they arrived (prepared, by hash), and blocks rebuilt here from their
// base and checked (rebuilt). A patch becomes a record in a plain
// repository when its chain stays within maxPatchDepth and nothing else
// in the repository or the batch has its hash: its hash is the agent's
// claim, which must never let it share a stored chunk (docs/security.md
// "Hostile agent"). The bases are found a page of blocks per query (two
// queries per block, on the index's one connection, were a third of the
// controller's CPU in a plan of 20 machines); rebuilds run on all cores.
func (p *Pending) planPatches(ctx context.Context, ws []BlockWrite, supplied map[Hash]*Chunk, have map[Hash]int64) (records map[Hash]*prepared, rebuilt []*Chunk, refused []int, err error) {
	c := p.r.c
	byDisk := map[string][]int64{}
	var pws []patchWrite
	count := map[Hash]int{}
	for i, w := range ws {
		if w.Zero || (w.Patch == nil && w.PatchData == nil) {
			continue
		}
		runs, pd, err := c.patchOf(w, p.specs[w.Disk].BlockSize)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%w: patch of block %d of disk %q: %v", ErrHashMismatch, w.Block, w.Disk, err)
		}
		pws = append(pws, patchWrite{i: i, runs: runs, data: pd})
		byDisk[w.Disk] = append(byDisk[w.Disk], w.Block)
		count[w.Hash]++
	}
	if len(pws) == 0 {
		return nil, nil, nil, nil
	}
	bases := map[string]map[int64]chunkRow{}
	for disk, blocks := range byDisk {
		rows, err := c.rowsAt(ctx, p.diskIDs[disk], p.ID, blocks)
		if err != nil {
			return nil, nil, nil, err
		}
		bases[disk] = rows
	}
	var candidates []Hash
	for k := range pws {
		w := ws[pws[k].i]
		pws[k].base, pws[k].hasBase = bases[w.Disk][w.Block]
		candidates = append(candidates, w.Hash)
	}
	claimed, err := c.patchHashes(ctx, candidates)
	if err != nil {
		return nil, nil, nil, err
	}
	records = map[Hash]*prepared{}
	for _, pw := range pws {
		w := ws[pw.i]
		depth := 1
		if pw.hasBase {
			depth = pw.base.depth + 1
		}
		_, stored := have[w.Hash]
		if c.pub != nil || depth > maxPatchDepth || count[w.Hash] > 1 || stored || claimed[w.Hash] || supplied[w.Hash] != nil {
			continue // rebuilt below
		}
		spec := p.specs[w.Disk]
		pp := &patchPrep{blockLen: spec.BlockSize, depth: depth}
		if pw.hasBase {
			pp.base, pp.baseHash = pw.base.id, pw.base.hash
		}
		pw := pw
		pp.rebuild = func() (*Chunk, error) { return p.patched(ctx, p.diskIDs[w.Disk], spec, w, pw) }
		records[w.Hash] = &prepared{hash: w.Hash, codec: pw.data.Codec, data: pw.data.Data, plainLen: pw.data.PlainLen, patch: pp}
	}
	// The records are checked after they are stored, off this path
	// (patchcheck.go); the rest are rebuilt and checked now.
	var rebuild []patchWrite
	for _, pw := range pws {
		if records[ws[pw.i].Hash] == nil {
			rebuild = append(rebuild, pw)
		}
	}
	out := make([]*Chunk, len(rebuild))
	errs := make([]error, len(rebuild))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(rebuild)) {
		wg.Go(func() {
			for {
				k := int(next.Add(1) - 1)
				if k >= len(rebuild) || ctx.Err() != nil {
					return
				}
				w := ws[rebuild[k].i]
				out[k], errs[k] = p.patched(ctx, p.diskIDs[w.Disk], p.specs[w.Disk], w, rebuild[k])
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, nil, nil, err
	}
	for k, err := range errs {
		if errors.Is(err, ErrHashMismatch) {
			refused, errs[k] = append(refused, rebuild[k].i), nil
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, nil, err
	}
	return records, out, refused, nil
}

// patched builds the chunk of a Patch write: the block's current content
// (the pending point's own row, else the newest committed one: base, or
// zeros when the block has no chunk) with the runs applied, checked
// against the write's Hash.
func (p *Pending) patched(ctx context.Context, diskID int64, spec DiskSpec, w BlockWrite, pw patchWrite) (*Chunk, error) {
	buf := make([]byte, spec.BlockSize)
	if pw.hasBase {
		cur, err := p.r.readChunkRow(ctx, pw.base)
		if errors.Is(err, fs.ErrNotExist) { // GC moved it since: look it up again
			cur, err = p.r.blockAt(ctx, diskID, w.Block, p.ID, spec.BlockSize)
		}
		if err != nil {
			return nil, fmt.Errorf("patch of block %d: %w", w.Block, err)
		}
		if len(cur) != spec.BlockSize {
			return nil, fmt.Errorf("patch of block %d: %w: base is %d bytes, disk blocks are %d", w.Block, ErrCorrupt, len(cur), spec.BlockSize)
		}
		copy(buf, cur)
	}
	for _, r := range pw.runs { // checked against the block by patchOf
		copy(buf[r.Offset:], r.Data)
	}
	if blake3.Sum256(buf) != w.Hash {
		return nil, fmt.Errorf("%w: patched block %d of disk %q", ErrHashMismatch, w.Block, w.Disk)
	}
	return &Chunk{Hash: w.Hash, Codec: CodecNone, Data: buf, PlainLen: len(buf)}, nil
}
