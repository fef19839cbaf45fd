package storage

import (
	"context"
	"crypto/cipher"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/ferrydr/ferry/storage/internal/pack"
	"github.com/zeebo/blake3"
)

// chunkRow is a chunk's index row.
type chunkRow struct {
	id       int64
	hash     Hash
	pack     uint64
	off      int64
	length   int64
	plainLen int
	codec    Codec
	slot     uint32
	// A patch record (docs/storage-format.md "Patch records"): plainLen
	// is the patch's, hash the block's it gives (claimed by the agent,
	// checked when it is read or folded). base is the chunk id it
	// applies to, 0 for a zero block; depth counts the patches down to a
	// whole chunk.
	patch bool
	base  int64
	depth int
}

const chunkCols = `id, hash, pack_id, offset, length, plain_len, codec, key_slot, base_id, depth`

func scanChunk(sc interface{ Scan(...any) error }) (chunkRow, error) {
	var r chunkRow
	var h []byte
	var pid int64
	var base sql.NullInt64
	err := sc.Scan(&r.id, &h, &pid, &r.off, &r.length, &r.plainLen, &r.codec, &r.slot, &base, &r.depth)
	r.pack = uint64(pid)
	r.patch, r.base = base.Valid, base.Int64
	copy(r.hash[:], h)
	return r, err
}

func (c *core) chunkByHash(ctx context.Context, h Hash) (chunkRow, error) {
	if r, ok := c.recent.chunkOf(h); ok {
		return r, nil
	}
	r, err := scanChunk(c.db.QueryRowContext(ctx, `SELECT `+chunkCols+` FROM chunks WHERE hash=?`, h[:]))
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("%w: chunk %s", ErrChunkMissing, h)
	}
	return r, err
}

func (c *core) chunkByID(ctx context.Context, id int64) (chunkRow, error) {
	if r, ok := c.recent.chunk(id); ok {
		return r, nil
	}
	r, err := scanChunk(c.db.QueryRowContext(ctx, `SELECT `+chunkCols+` FROM chunks WHERE id=?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("%w: chunk id %d", ErrChunkMissing, id)
	}
	return r, err
}

// lookupHashes returns the chunk ids of the hashes that are stored, up to
// locateBatch hashes per query (a cycle's batch of a few hundred blocks
// took as many queries, on the index's one connection).
func (c *core) lookupHashes(ctx context.Context, hs []Hash) (map[Hash]int64, error) {
	out := make(map[Hash]int64, len(hs))
	seen := make(map[Hash]bool, len(hs))
	var args []any
	flush := func() error {
		if len(args) == 0 {
			return nil
		}
		// A chunk marked damaged counts as not stored: the writer stores
		// it again (the group commit gives the new copy the chunk's id).
		// So does a patch record, whose hash is the agent's claim until
		// it is folded: nothing may deduplicate against it.
		rows, err := c.db.QueryContext(ctx, `SELECT id, hash FROM chunks WHERE hash IN (?`+strings.Repeat(",?", len(args)-1)+`)
			AND base_id IS NULL AND id NOT IN (SELECT chunk_id FROM damaged_chunks)`, args...)
		args = args[:0]
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			var b []byte
			if err := rows.Scan(&id, &b); err != nil {
				return err
			}
			var h Hash
			copy(h[:], b)
			out[h] = id
		}
		return rows.Err()
	}
	for _, h := range hs {
		if seen[h] {
			continue
		}
		seen[h] = true
		// The recent level first (recent.go). Its chunks are never marked
		// damaged: MarkDamaged folds it first.
		if row, ok := c.recent.chunkOf(h); ok {
			if !row.patch {
				out[h] = row.id
			}
			continue
		}
		args = append(args, h[:])
		if len(args) == locateBatch {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// HasChunks reports which of the hashes are stored.
func (r *Repo) HasChunks(ctx context.Context, hashes []Hash) ([]bool, error) {
	if err := r.c.check(); err != nil {
		return nil, err
	}
	m, err := r.c.lookupHashes(ctx, hashes)
	if err != nil {
		return nil, err
	}
	out := make([]bool, len(hashes))
	for i, h := range hashes {
		_, out[i] = m[h]
	}
	return out, nil
}

// ReadChunk returns a chunk's plaintext, checked against its hash.
func (r *Repo) ReadChunk(ctx context.Context, h Hash) ([]byte, error) {
	if err := r.c.check(); err != nil {
		return nil, err
	}
	row, err := r.c.chunkByHash(ctx, h)
	if err != nil {
		return nil, err
	}
	return r.readChunkRow(ctx, row)
}

// readChunkID reads a chunk by id; if its pack vanished (GC moved it
// meanwhile) the row is looked up once more.
func (r *Repo) readChunkID(ctx context.Context, id int64) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		row, err := r.c.chunkByID(ctx, id)
		if err != nil {
			return nil, err
		}
		b, err := r.readChunkRow(ctx, row)
		if attempt == 0 && errors.Is(err, fs.ErrNotExist) {
			continue
		}
		return b, err
	}
}

func (r *Repo) readChunkRow(ctx context.Context, row chunkRow) ([]byte, error) {
	c := r.c
	ch, err := c.readChunkRecord(row)
	if err != nil {
		return nil, err
	}
	if row.patch {
		return r.readPatch(ctx, row, ch)
	}
	data := ch.Data
	if ch.Flags&pack.ChunkEncrypted != 0 {
		if r.priv == nil {
			return nil, fmt.Errorf("%w: chunk %s", ErrKeyRequired, row.hash)
		}
		aead, err := c.aeadFor(ctx, r.priv, ch.KeySlot)
		if err != nil {
			return nil, err
		}
		if len(data) < gcmNonceSize {
			return nil, &CorruptError{Pack: packName(row.pack), Offset: row.off, Hash: row.hash, Reason: "ciphertext shorter than its nonce"}
		}
		data, err = aead.Open(nil, data[:gcmNonceSize], data[gcmNonceSize:], chunkAAD(row.hash, Codec(ch.Codec), ch.PlainLen))
		if err != nil {
			return nil, &CorruptError{Pack: packName(row.pack), Offset: row.off, Hash: row.hash, Reason: "ciphertext fails authentication", Err: err}
		}
	}
	plain, err := c.zc.decode(Codec(ch.Codec), data, int(ch.PlainLen))
	if err != nil {
		return nil, &CorruptError{Pack: packName(row.pack), Offset: row.off, Hash: row.hash, Reason: "decode", Err: err}
	}
	if blake3.Sum256(plain) != row.hash {
		return nil, &CorruptError{Pack: packName(row.pack), Offset: row.off, Hash: row.hash, Reason: "plaintext does not match its hash", Err: ErrHashMismatch}
	}
	return plain, nil
}

// readChunkRecord reads a chunk record and checks it against its index row
// (CRC and identity only: no key needed).
func (c *core) readChunkRecord(row chunkRow) (pack.Chunk, error) {
	rec, err := c.readRecord(row.pack, row.off, row.length)
	var ce *CorruptError
	if errors.As(err, &ce) && ce.Hash == (Hash{}) {
		ce.Hash = row.hash
	}
	if err != nil {
		return pack.Chunk{}, err
	}
	bad := func(reason string, err error) (pack.Chunk, error) {
		return pack.Chunk{}, &CorruptError{Pack: packName(row.pack), Offset: row.off, Hash: row.hash, Reason: reason, Err: err}
	}
	if rec.Type != pack.TypeChunk {
		return bad(fmt.Sprintf("record type %d, want chunk", rec.Type), nil)
	}
	ch, err := pack.DecodeChunk(rec.Payload)
	if err != nil {
		return bad("chunk record", err)
	}
	if Hash(ch.Hash) != row.hash || int(ch.PlainLen) != row.plainLen || ch.KeySlot != row.slot || Codec(ch.Codec) != row.codec ||
		(ch.Flags&pack.ChunkPatch != 0) != row.patch {
		return bad("chunk record does not match its index row", nil)
	}
	return ch, nil
}

// aeadFor returns the AEAD of a data key slot, unwrapping it with priv.
func (c *core) aeadFor(ctx context.Context, priv *PrivateKey, slot uint32) (cipher.AEAD, error) {
	c.keyMu.Lock()
	a := c.aeads[slot]
	c.keyMu.Unlock()
	if a != nil {
		return a, nil
	}
	sk, err := c.sealedKey(ctx, slot)
	if err != nil {
		return nil, err
	}
	a, err = openDataKey(priv, c.repoID, sk)
	if err != nil {
		return nil, err
	}
	c.keyMu.Lock()
	c.aeads[slot] = a
	c.keyMu.Unlock()
	return a, nil
}

func (c *core) sealedKey(ctx context.Context, slot uint32) (pack.SealedKey, error) {
	var b []byte
	err := c.db.QueryRowContext(ctx, `SELECT sealed FROM keys WHERE slot=?`, slot).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return pack.SealedKey{}, fmt.Errorf("%w: no key record for slot %d", ErrCorrupt, slot)
	}
	if err != nil {
		return pack.SealedKey{}, err
	}
	sk, err := pack.DecodeKey(b)
	if err != nil {
		return sk, fmt.Errorf("%w: key slot %d: %v", ErrCorrupt, slot, err)
	}
	return sk, nil
}

// SealedKey is a data key as stored: wrapped to the repository's public key.
type SealedKey struct {
	Slot         uint32
	EphemeralPub [32]byte
	Nonce        [12]byte
	Wrapped      [48]byte
}

// Record returns the sealed key as its key record payload:
// LE32(slot) ‖ ephemeral_pub[32] ‖ nonce[12] ‖ wrapped[48].
func (k SealedKey) Record() []byte { return pack.EncodeKey(pack.SealedKey(k)) }

// Envelope is a chunk's stored bytes, for a key-holding reader (the
// recovery-site agent) that decrypts per docs/storage-format.md.
type Envelope struct {
	RepoID   [16]byte
	Hash     Hash
	Codec    Codec
	PlainLen int
	// Encrypted chunks: Key is the sealed data key and Data is
	// nonce(12) || AES-256-GCM ciphertext+tag. Otherwise Key is nil and Data
	// is the encoded chunk.
	Key  *SealedKey
	Data []byte
}

// ChunkEnvelope returns a chunk's stored bytes as they are, after checking
// the record's CRC; it needs no private key.
func (r *Repo) ChunkEnvelope(ctx context.Context, h Hash) (Envelope, error) {
	if err := r.c.check(); err != nil {
		return Envelope{}, err
	}
	row, err := r.c.chunkByHash(ctx, h)
	if err != nil {
		return Envelope{}, err
	}
	return r.envelope(ctx, row)
}

// ChunkLoc is where a stored chunk lies, as Locate found it: EnvelopeAt
// reads it without an index query.
type ChunkLoc struct{ row chunkRow }

// Locate finds where the chunks of hs are stored, in one index query; a
// hash that is not stored has no entry. Every reader and writer of the
// index shares one connection: a move locates a window of its blocks at
// once rather than querying per block.
func (r *Repo) Locate(ctx context.Context, hs []Hash) (map[Hash]ChunkLoc, error) {
	if err := r.c.check(); err != nil {
		return nil, err
	}
	out := make(map[Hash]ChunkLoc, len(hs))
	rest := make([]Hash, 0, len(hs))
	for _, h := range hs { // the recent level first (recent.go)
		if row, ok := r.c.recent.chunkOf(h); ok {
			out[h] = ChunkLoc{row}
		} else {
			rest = append(rest, h)
		}
	}
	hs = rest
	for len(hs) > 0 {
		n := min(len(hs), locateBatch)
		args := make([]any, n)
		for i := range n {
			args[i] = hs[i][:]
		}
		hs = hs[n:]
		rows, err := r.c.db.QueryContext(ctx, `SELECT `+chunkCols+` FROM chunks WHERE hash IN (?`+strings.Repeat(",?", n-1)+`)`, args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			row, err := scanChunk(rows)
			if err != nil {
				rows.Close()
				return nil, err
			}
			out[row.hash] = ChunkLoc{row}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// locateBatch bounds the hashes of one Locate query (SQLite's parameter limit
// is far above it).
const locateBatch = 256

// EnvelopeAt is ChunkEnvelope of a located chunk. A chunk that GC moved
// since it was located is looked up once more.
func (r *Repo) EnvelopeAt(ctx context.Context, loc ChunkLoc) (Envelope, error) {
	if err := r.c.check(); err != nil {
		return Envelope{}, err
	}
	env, err := r.envelope(ctx, loc.row)
	if !errors.Is(err, fs.ErrNotExist) {
		return env, err
	}
	return r.ChunkEnvelope(ctx, loc.row.hash)
}

func (r *Repo) envelope(ctx context.Context, row chunkRow) (Envelope, error) {
	if row.patch {
		// A reader of envelopes knows whole chunks only: give it the
		// block the patch makes (checked against its hash).
		plain, err := r.readChunkRow(ctx, row)
		if err != nil {
			return Envelope{}, err
		}
		return Envelope{RepoID: r.c.repoID, Hash: row.hash, Codec: CodecNone, PlainLen: len(plain), Data: plain}, nil
	}
	ch, err := r.c.readChunkRecord(row)
	if err != nil {
		return Envelope{}, err
	}
	env := Envelope{RepoID: r.c.repoID, Hash: row.hash, Codec: Codec(ch.Codec), PlainLen: int(ch.PlainLen), Data: ch.Data}
	if ch.Flags&pack.ChunkEncrypted != 0 {
		sk, err := r.c.sealedKey(ctx, ch.KeySlot)
		if err != nil {
			return Envelope{}, err
		}
		k := SealedKey(sk)
		env.Key = &k
	}
	return env, nil
}

// OpenEnvelope decrypts and decodes an envelope with the private key and
// checks the plaintext against its hash: the reference implementation of
// the construction in docs/storage-format.md.
func OpenEnvelope(priv *PrivateKey, env Envelope) ([]byte, error) {
	data := env.Data
	if env.Key != nil {
		if priv == nil {
			return nil, ErrKeyRequired
		}
		aead, err := openDataKey(priv, env.RepoID, pack.SealedKey(*env.Key))
		if err != nil {
			return nil, err
		}
		if len(data) < gcmNonceSize {
			return nil, fmt.Errorf("%w: ciphertext too short", ErrCorrupt)
		}
		data, err = aead.Open(nil, data[:gcmNonceSize], data[gcmNonceSize:], chunkAAD(env.Hash, env.Codec, uint32(env.PlainLen)))
		if err != nil {
			return nil, fmt.Errorf("%w: chunk %s fails authentication", ErrCorrupt, env.Hash)
		}
	}
	zc, err := newCodecs()
	if err != nil {
		return nil, err
	}
	defer zc.close()
	plain, err := zc.decode(env.Codec, data, env.PlainLen)
	if err != nil {
		return nil, fmt.Errorf("%w: chunk %s: %v", ErrCorrupt, env.Hash, err)
	}
	if blake3.Sum256(plain) != env.Hash {
		return nil, fmt.Errorf("%w: chunk %s", ErrHashMismatch, env.Hash)
	}
	return plain, nil
}

// patchHashes returns which of hs are stored as patch records.
func (c *core) patchHashes(ctx context.Context, hs []Hash) (map[Hash]bool, error) {
	return c.hashesWhere(ctx, hs, true)
}

// hashesWhere returns which of hashes have a chunk row, a patch record's
// only when patches.
func (c *core) hashesWhere(ctx context.Context, hs []Hash, patches bool) (map[Hash]bool, error) {
	out := map[Hash]bool{}
	var hashes []any
	for _, h := range hs {
		if row, ok := c.recent.chunkOf(h); ok {
			if row.patch || !patches {
				out[h] = true
			}
			continue
		}
		hashes = append(hashes, h[:])
	}
	cond := "1"
	if patches {
		cond = "base_id IS NOT NULL"
	}
	for len(hashes) > 0 {
		n := min(len(hashes), locateBatch)
		bs, err := column[[]byte](c.db.QueryContext(ctx, `SELECT hash FROM chunks WHERE hash IN (?`+strings.Repeat(",?", n-1)+`) AND `+cond, hashes[:n]...))
		if err != nil {
			return nil, err
		}
		for _, b := range bs {
			var h Hash
			copy(h[:], b) // a malformed row must not panic the controller
			out[h] = true
		}
		hashes = hashes[n:]
	}
	return out, nil
}
