-- Ferry repository index, schema version 5 (docs/storage-format.md "Patch
-- records"): a chunk may be a patch stored as it arrived, over the chunk
-- base_id (0: a zero block), until compaction folds it into a whole chunk.
-- depth counts the patches from a whole chunk to this one (1 for a patch
-- over a whole chunk); whole chunks have base_id NULL and depth 0.
ALTER TABLE chunks ADD COLUMN base_id INTEGER;
ALTER TABLE chunks ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
-- GC's "is this chunk a patch's base" check, and compaction's list of
-- patches to fold.
CREATE INDEX chunks_base ON chunks (base_id) WHERE base_id IS NOT NULL;
