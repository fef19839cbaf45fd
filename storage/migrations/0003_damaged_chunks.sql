-- Ferry repository index, schema version 3 (docs/storage-format.md "Index").
-- Chunks found damaged (Verify, then MarkDamaged): writers store such a
-- chunk again instead of deduplicating against it (the new copy takes the
-- chunk's id, so every point reading it is whole again and the row goes),
-- and Points marks the committed points that read one as damaged.
CREATE TABLE damaged_chunks (
	chunk_id INTEGER PRIMARY KEY,
	found_ns INTEGER NOT NULL,
	reason   TEXT    NOT NULL DEFAULT ''
);
